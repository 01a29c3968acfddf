"""sdrt build --lora / --embedding: adapters applied to the source before export.

A random PEFT LoRA (attention and resnet convolutions of the U-Net, attention of the text
encoder) is made here and saved with diffusers' ``save_lora_weights``; the folder built
with it must give diffusers' images with the same LoRA fused, and record it. An embedding
added at build time must give the images of the same embedding loaded at run time.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

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
def lora_built(tiny_source, lora_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("lora-built") / "tiny"
    return _build(tiny_source, output, loras=(LoraOption(lora_file, LORA_SCALE),))


def test_fused_build_equals_diffusers_with_the_lora_fused(
    lora_built, lora_file, tiny_built, tiny_source
):
    theirs = _reference(tiny_source)
    theirs.load_lora_weights(str(lora_file))
    theirs.fuse_lora(lora_scale=LORA_SCALE)
    ours = _ours(lora_built)
    assert np.abs(ours - _theirs(theirs)).max() <= MAX_IMAGE_DIFF
    assert np.abs(ours - _ours(tiny_built)).max() > MIN_ADAPTER_EFFECT


def test_fused_build_records_the_lora(lora_built, lora_file, tiny_source):
    manifest = read_manifest(lora_built)
    (adapter,) = manifest.adapters
    assert (adapter.kind, adapter.file, adapter.scale) == ("lora", str(lora_file), LORA_SCALE)
    assert adapter.sha256 == sha256_file(lora_file)
    assert manifest.source.path_or_id == str(tiny_source)
    assert not (lora_built / ".adapters").exists()
    info = subprocess.run(
        [sys.executable, "-m", "sdrt", "info", str(lora_built)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"LoRA fused at scale {LORA_SCALE:g}: {lora_file}" in info


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
    cases = [
        (["--lora", f"{corrupt}:0.5"], "corrupt.safetensors"),
        (["--lora", str(foreign)], "foreign.safetensors"),
        (["--lora", f"{lora_file}:strong"], "SCALE a number"),
        (["--lora", str(tmp_path / "missing.safetensors")], "no such file"),
        (["--embedding", str(wide)], "width 768"),
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
