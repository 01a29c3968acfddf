"""Run-time LoRA honours peft's adapter settings in the file (``lora_adapter_metadata``):
each module's rank and scale equal peft's own layers', and the image equals diffusers'
load_lora_weights of the same file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lora_helpers import diffusers_images, sdrt_images, write_peft_file_with_metadata

import sdrt
from sdrt.adapters.lora_files import read_lora_file
from sdrt.errors import InputError

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

# Images against diffusers, in 0..1 (as tests/test_lora_pipeline.py).
IMAGE_TOLERANCE = 2 / 255
PROMPT = "a red fox in snow"
STEPS = 3
# The file: r=4, lora_alpha=8 (scale 2, not 1), with a per-module alpha and a text
# encoder at half strength.
UNET_CONFIG = {"r": 4, "lora_alpha": 8, "alpha_pattern": {"to_k": 2}}
TEXT_CONFIG = {"r": 4, "lora_alpha": 2}


class _Blocks(torch.nn.Module):
    """Modules named as a U-Net's attention: blocks.N.to_q / to_k / to_out.0."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        block = lambda: torch.nn.ModuleDict(  # noqa: E731
            {
                "to_q": torch.nn.Linear(6, 6),
                "to_k": torch.nn.Linear(6, 6),
                "to_out": torch.nn.Sequential(torch.nn.Linear(6, 5)),
            }
        )
        self.blocks = torch.nn.ModuleList([block(), block()])


@pytest.mark.parametrize(
    "config",
    [
        {"r": 4, "lora_alpha": 8},
        {
            "r": 4,
            "lora_alpha": 8,
            "rank_pattern": {"blocks.1.to_q": 2},
            "alpha_pattern": {"to_k": 3},
        },
        {"r": 4, "lora_alpha": 6, "use_rslora": True},
    ],
)
def test_ranks_and_scales_are_peft_s(tmp_path, config):
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    lora_config = peft.LoraConfig(
        target_modules=["to_q", "to_k", "to_out.0"], init_lora_weights=False, **config
    )
    model = peft.inject_adapter_in_model(lora_config, _Blocks())
    theirs = {
        name: (layer.r["default"], layer.scaling["default"])
        for name, layer in model.named_modules()
        if isinstance(layer, LoraLayer)
    }
    diffusers.StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=get_peft_model_state_dict(model),
        unet_lora_adapter_metadata=lora_config.to_dict(),
        safe_serialization=True,
    )
    lora = read_lora_file(tmp_path / "pytorch_lora_weights.safetensors")
    ours = {m.key: (m.rank, m.scale) for m in lora.modules}
    assert ours.keys() == theirs.keys() and len(ours) == 6
    for name, (rank, scale) in theirs.items():
        assert ours[name][0] == rank and ours[name][1] == pytest.approx(scale, rel=1e-12), name
    # The metadata matters here: without it every scale would be 1.
    assert any(scale != 1 for _, scale in ours.values())


def test_metadata_that_contradicts_the_factors_is_refused(tmp_path):
    from safetensors.numpy import save_file

    factors = {
        "unet.a.to_q.lora_A.weight": np.ones((4, 6), np.float32),
        "unet.a.to_q.lora_B.weight": np.ones((6, 4), np.float32),
    }
    cases = [
        (
            {"unet.r": 2, "unet.lora_alpha": 4},
            "gives module 'unet.a.to_q' rank 2; its factors have rank 4",
        ),
        ({"unet.r": 4, "unet.use_dora": True}, "DoRA"),
        (
            {"unet.r": 4, "unet.lora_alpha": "eight"},
            "lora_alpha and alpha_pattern values to be numbers",
        ),
        ("[1, 2]", "to be a JSON object, got list"),
    ]
    for metadata, expected in cases:
        path = tmp_path / "bad.safetensors"
        text = metadata if isinstance(metadata, str) else json.dumps(metadata)
        save_file(factors, str(path), metadata={"lora_adapter_metadata": text})
        with pytest.raises(InputError, match=expected):
            read_lora_file(path)


@pytest.fixture(scope="module")
def latents():
    return np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)


def test_run_time_image_equals_diffusers_with_the_file_s_lora_alpha(
    tiny_source, tiny_built_lora_ready, tmp_path, latents
):
    path = write_peft_file_with_metadata(
        tmp_path / "lora", tiny_source, 7, UNET_CONFIG, TEXT_CONFIG
    )
    theirs = diffusers_images(tiny_source, [(path, "m")], PROMPT, latents, STEPS)
    base = diffusers_images(tiny_source, [], PROMPT, latents, STEPS)
    pipe = sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu")
    pipe.load_lora_weights(path, adapter_name="m")
    ours = sdrt_images(pipe, latents, PROMPT, STEPS)
    assert float(np.abs(ours - theirs).max()) <= IMAGE_TOLERANCE
    # Read at scale 1 (the metadata ignored) the same factors give another image.
    plain = tmp_path / "plain.safetensors"
    from safetensors.numpy import load_file, save_file

    save_file(load_file(str(path)), str(plain))
    pipe.load_lora_weights(plain, adapter_name="plain")
    ignored = sdrt_images(pipe, latents, PROMPT, STEPS)
    assert float(np.abs(ignored - theirs).max()) > 3 * IMAGE_TOLERANCE
    assert float(np.abs(theirs - base).max()) > 3 * IMAGE_TOLERANCE
