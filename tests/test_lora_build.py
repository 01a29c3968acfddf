"""``sdrt build --lora-ready``: the weights LoRA touches become overridable initializers,
recorded in sdrt.json with where their bytes lie; with nothing fed the graphs compute what
a plain build computes."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from sdrt.export.adaptable import target_pattern

import sdrt
from sdrt.adapters.base_weights import BaseWeights

# A LoRA-ready and a plain build of the same weights run the same float32 math.
SAME_GRAPH_TOLERANCE = 1e-5


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


def test_map_covers_the_targets_and_points_at_their_bytes(tiny_built_lora_ready, tiny_source):
    manifest = sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu").manifest
    base = BaseWeights(tiny_built_lora_ready)
    for name in ("unet", "text_encoder"):
        component = manifest.components[name]
        assert {w.module for w in component.adaptable} == _expected_modules(tiny_source, name)
        graph = onnx.load(str(tiny_built_lora_ready / component.file)).graph
        initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        graph_inputs = {i.name for i in graph.input}
        for weight in component.adaptable:
            assert weight.input in graph_inputs  # overridable: an input with a default
            np.testing.assert_array_equal(base.read(weight), initializers[weight.input])
        # The I/O contract is unchanged: the weights are not among the required inputs.
        assert {s.name for s in component.inputs}.isdisjoint(w.input for w in component.adaptable)
    assert not manifest.components["vae_decoder"].adaptable


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
