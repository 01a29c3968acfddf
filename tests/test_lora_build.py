"""``sdrt build --lora-ready``: the modules LoRA touches gain low-rank branches whose
factors are graph inputs with zero-size defaults, recorded in sdrt.json; base weights stay
constants; with nothing fed the graphs compute what a plain build computes."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from sdrt.export.adaptable import target_pattern

import sdrt

# A LoRA-ready and a plain build of the same weights run the same float32 math.
SAME_GRAPH_TOLERANCE = 1e-5
# A fed random rank-2 branch moves the U-Net's output far more than rounding does.
CHANGED = 1e-3


def _expected_modules(source, component: str) -> set[str]:
    """What the map should cover, from the diffusers/transformers model itself."""
    import diffusers
    import transformers

    if component == "unet":
        model = diffusers.UNet2DConditionModel.from_pretrained(source / "unet")
    else:
        model = transformers.CLIPTextModel.from_pretrained(source / component)
    pattern = target_pattern(component)
    return {
        name
        for name, module in model.named_modules()
        if pattern.match(name)
        and (
            isinstance(module, torch.nn.Linear)
            or (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1))
        )
    }


def test_branches_cover_the_targets_with_zero_size_defaults(tiny_built_lora_ready, tiny_source):
    manifest = sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu").manifest
    for name in ("unet", "text_encoder"):
        component = manifest.components[name]
        assert {b.module for b in component.lora_branches} == _expected_modules(tiny_source, name)
        graph = onnx.load(str(tiny_built_lora_ready / component.file)).graph
        initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        graph_inputs = {i.name: i for i in graph.input}
        ranks = set()
        for branch in component.lora_branches:
            down, up = initializers[branch.down], initializers[branch.up]
            assert down.shape == (branch.features_in, 0) and up.shape == (0, branch.features_out)
            dims = [
                [d.dim_param or d.dim_value for d in graph_inputs[n].type.tensor_type.shape.dim]
                for n in (branch.down, branch.up)
            ]
            assert dims[0][0] == branch.features_in and dims[1][1] == branch.features_out
            assert isinstance(dims[0][1], str) and dims[0][1] == dims[1][0]
            ranks.add(dims[0][1])
        assert len(ranks) == len(component.lora_branches)  # a rank of its own per module
        # Only the branch factors are overridable: the base weights stay constants.
        table = {component.token_embedding.input} if component.token_embedding else set()
        overridable = set(graph_inputs) & set(initializers) - table
        assert overridable == {n for b in component.lora_branches for n in (b.down, b.up)}
        # The I/O contract is unchanged: the factors are not among the required inputs.
        assert {s.name for s in component.inputs}.isdisjoint(overridable)
    assert not manifest.components["vae_decoder"].lora_branches


def test_a_fed_branch_adds_its_product(tiny_built_lora_ready):
    """Feeding one module's factors changes the output; feeding zeros of rank 2 does not."""
    pipe = sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu")
    session = pipe._session("unet")
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8), np.float32),
        "timestep": np.array([321.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), np.float32),
    }
    base = session.run(feeds)["out_sample"]
    branch = pipe.manifest.components["unet"].lora_branches[0]
    zeros = {
        branch.down: np.zeros((branch.features_in, 2), np.float32),
        branch.up: np.zeros((2, branch.features_out), np.float32),
    }
    np.testing.assert_array_equal(session.run({**feeds, **zeros})["out_sample"], base)
    fed = {
        branch.down: rng.standard_normal((branch.features_in, 2), np.float32),
        branch.up: rng.standard_normal((2, branch.features_out), np.float32),
    }
    assert np.abs(session.run({**feeds, **fed})["out_sample"] - base).max() > CHANGED


def test_nothing_fed_computes_what_a_plain_build_does(tiny_built_lora_ready, tiny_built):
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 8, 8), np.float32),
        "timestep": np.array([321.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), np.float32),
    }
    outputs = [
        sdrt.Pipeline.load(folder, backend="ort-cpu")._session("unet").run(feeds)["out_sample"]
        for folder in (tiny_built_lora_ready, tiny_built)
    ]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=SAME_GRAPH_TOLERANCE)
