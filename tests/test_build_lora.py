"""sdrt build --lora / --embedding: adapters applied to the source before export.

A random PEFT LoRA (attention and resnet convolutions of the U-Net, attention of the text
encoder) is made here and saved with diffusers' ``save_lora_weights``, beside a second one;
the folder built with both must give diffusers' images with both set at their scales
(``set_adapters``), and record them. An embedding
added at build time must give the images of the same embedding loaded at run time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from lora_helpers import write_peft_file

import sdrt
from sdrt.adapters.options import EmbeddingOption, LoraOption, parse_lora_option
from sdrt.errors import InputError
from sdrt.manifest import read_manifest, sha256_file

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

# The bound for images in [0, 1]; float32 on both sides measures ~1e-6.
MAX_IMAGE_DIFF = 2 / 255
# The LoRA (and the embedding) must move the image by more than this, or nothing is tested.
MIN_ADAPTER_EFFECT = 1e-2
LORA_SCALE = 0.7
SECOND_SCALE = 0.4
STEPS = 3
PROMPT = "a red fox in the snow"


def _reference(source):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(source), safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)


def _ours(folder, prompt: str = PROMPT, pipe=None) -> np.ndarray:
    pipe = pipe or sdrt.Pipeline.load(folder)
    return pipe(
        prompt,
        num_inference_steps=STEPS,
        latents=_latents(),
        scheduler="EulerDiscreteScheduler",
        output_type="np",
    ).images


def _theirs(pipe, prompt: str = PROMPT) -> np.ndarray:
    return pipe(
        prompt,
        num_inference_steps=STEPS,
        latents=torch.from_numpy(_latents()),
        height=64,
        width=64,
        output_type="np",
    ).images


@pytest.fixture(scope="module")
def lora_file(tiny_source, tmp_path_factory):
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    pipe = _reference(tiny_source)
    torch.manual_seed(0)
    unet_config = peft.LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,  # random A and B: a LoRA that changes the image
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
    )
    text_config = peft.LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
    )
    pipe.unet.add_adapter(unet_config)
    # peft directly: transformers' add_adapter asks for a newer peft than the pinned one
    peft.inject_adapter_in_model(text_config, pipe.text_encoder)
    folder = tmp_path_factory.mktemp("lora")
    diffusers.StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipe.text_encoder)
        ),
        safe_serialization=True,
    )
    return folder / "pytorch_lora_weights.safetensors"


def _build(tiny_source, output, **options):
    from sdrt.export.build import BuildConfig, build

    config = BuildConfig(
        source=str(tiny_source), output=output, min_size=64, max_size=256, **options
    )
    return build(config).output


@pytest.fixture(scope="module")
def second_lora_file(tiny_source, tmp_path_factory):
    """Another random LoRA (U-Net and text encoder attention), as save_lora_weights writes it."""
    return write_peft_file(tmp_path_factory.mktemp("lora-b"), tiny_source, seed=4)


@pytest.fixture(scope="module")
def lora_built(tiny_source, lora_file, second_lora_file, tmp_path_factory):
    """The tiny model built with both LoRAs fused (--lora a:0.7 --lora b:0.4)."""
    output = tmp_path_factory.mktemp("lora-built") / "tiny"
    loras = (LoraOption(lora_file, LORA_SCALE), LoraOption(second_lora_file, SECOND_SCALE))
    return _build(tiny_source, output, loras=loras)


def test_fused_build_equals_diffusers_with_both_loras_set(
    lora_built, lora_file, second_lora_file, tiny_built, tiny_source
):
    theirs = _reference(tiny_source)
    theirs.load_lora_weights(str(lora_file), adapter_name="a")
    theirs.load_lora_weights(str(second_lora_file), adapter_name="b")
    theirs.set_adapters(["a", "b"], adapter_weights=[LORA_SCALE, SECOND_SCALE])
    ours = _ours(lora_built)
    assert np.abs(ours - _theirs(theirs)).max() <= MAX_IMAGE_DIFF
    assert np.abs(ours - _ours(tiny_built)).max() > MIN_ADAPTER_EFFECT
    # Each LoRA counts: with either one alone diffusers gives another image.
    for name, scale in (("a", LORA_SCALE), ("b", SECOND_SCALE)):
        theirs.set_adapters(name, adapter_weights=scale)
        assert np.abs(ours - _theirs(theirs)).max() > MIN_ADAPTER_EFFECT


def test_fused_build_records_the_loras(lora_built, lora_file, second_lora_file, tiny_source):
    manifest = read_manifest(lora_built)
    recorded = [(a.kind, a.file, a.scale, a.sha256) for a in manifest.adapters]
    assert recorded == [
        ("lora", str(lora_file), LORA_SCALE, sha256_file(lora_file)),
        ("lora", str(second_lora_file), SECOND_SCALE, sha256_file(second_lora_file)),
    ]
    assert manifest.source.path_or_id == str(tiny_source)
    assert not (lora_built / ".adapters").exists()
    info = subprocess.run(
        [sys.executable, "-m", "sdrt", "info", str(lora_built)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"LoRA fused at scale {LORA_SCALE:g}: {lora_file}" in info
    assert f"LoRA fused at scale {SECOND_SCALE:g}: {second_lora_file}" in info


@pytest.mark.heavy
def test_embedding_at_build_equals_embedding_at_run_time(tiny_source, tiny_built, tmp_path_factory):
    folder = tmp_path_factory.mktemp("embedding")
    vectors = np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32)
    path = folder / "cat.safetensors"
    safetensors_torch.save_file({"<cat>": torch.from_numpy(vectors)}, path)
    built = _build(tiny_source, folder / "tiny", embeddings=(EmbeddingOption(path, "<kitty>"),))
    manifest = read_manifest(built)
    (adapter,) = manifest.adapters
    assert adapter.kind == "textual_inversion" and adapter.tokens == ("<kitty>", "<kitty>_1")
    runtime = sdrt.Pipeline.load(tiny_built)
    runtime.load_textual_inversion(path, token="<kitty>")
    prompt = "a <kitty> in the snow"
    at_build = _ours(built, prompt)
    assert np.abs(at_build - _ours(tiny_built, prompt, runtime)).max() <= MAX_IMAGE_DIFF
    assert np.abs(at_build - _ours(tiny_built, prompt)).max() > MIN_ADAPTER_EFFECT
    # The built folder's tokenizer knows the tokens: loading them again is refused.
    with pytest.raises(InputError, match="<kitty> already in tokenizer vocabulary"):
        sdrt.Pipeline.load(built).load_textual_inversion(path, token="<kitty>")


def _sdrt_build(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdrt", "build", *args], capture_output=True, text=True
    )


@pytest.mark.heavy
def test_bad_adapter_files_exit_2_with_one_line_and_leave_nothing(tiny_source, tmp_path, lora_file):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    foreign = tmp_path / "foreign.safetensors"
    safetensors_torch.save_file(
        {"unet.no_such_block.to_q.lora_A.weight": torch.zeros(4, 8)}, foreign
    )
    wide = tmp_path / "wide.safetensors"
    safetensors_torch.save_file({"<w>": torch.zeros(768)}, wide)
    fits = tmp_path / "fits.safetensors"
    safetensors_torch.save_file({"<f>": torch.zeros(32)}, fits)
    cases = [
        (["--lora", f"{corrupt}:0.5"], "corrupt.safetensors"),
        (["--lora", str(foreign)], "foreign.safetensors"),
        (["--lora", f"{lora_file}:strong"], "SCALE a number"),
        (["--lora", str(tmp_path / "missing.safetensors")], "does not exist"),
        (["--embedding", str(wide)], "width 768"),
        # "tree</w>" is a word of the tiny vocabulary (diffusers would take the token)
        (["--embedding", f"{fits}:tree"], "Token tree is a word of the tokenizer vocabulary"),
    ]
    for extra, expected in cases:
        output = tmp_path / "out" / "tiny"
        result = _sdrt_build(str(tiny_source), "-o", str(output), *extra)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (extra, result.stderr)
        assert expected in lines[-1] and lines[-1].startswith("sdrt build: error:"), lines
        assert "Traceback" not in result.stderr
        assert not output.exists()
        assert not [p for p in output.parent.glob(".*")] if output.parent.exists() else True


def test_lora_option_parses_file_and_scale(lora_file):
    assert parse_lora_option(f"{lora_file}:0.25") == LoraOption(lora_file, 0.25)
    assert parse_lora_option(str(lora_file)) == LoraOption(lora_file, 1.0)
    with pytest.raises(InputError, match="finite"):
        parse_lora_option(f"{lora_file}:nan")


def test_manifest_adapters_round_trip(lora_built):
    data = json.loads((lora_built / "sdrt.json").read_text())
    assert data["adapters"][0]["scale"] == LORA_SCALE
