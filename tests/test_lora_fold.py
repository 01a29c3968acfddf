"""A LoRA-ready graph with its branches folded away (sdrt/adapters/lora_fold.py): the base
model exactly, each branch's base weight found with its layout, graphs it does not
understand refused by name, and TensorRT engines of a LoRA-ready folder built from it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from test_engines_build import build

from sdrt.adapters.lora_fold import (
    CONV_1X1,
    CONV_KXK,
    GEMM_OUT_IN,
    MATMUL,
    fold_branches,
    weight_slots,
    write_folded_copy,
)
from sdrt.errors import ModelFolderError
from sdrt.manifest import read_manifest

ADAPTED = ("unet", "text_encoder")
# W + delta in the base weights against the branch fed the same factors (fp32 sums).
WEIGHTS_VS_FEEDS = 1e-5


def feeds_for(component, rng):
    sizes = {"batch": 2, "latent_height": 8, "latent_width": 8, "sequence": 77, "steps": 2}
    feeds = {}
    for spec in component.inputs:
        shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
        if spec.dtype.startswith("int"):
            feeds[spec.name] = rng.integers(0, 900, shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def run(model_or_path, feeds):
    source = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(source).run(None, feeds)


@pytest.mark.parametrize(
    ("ready", "name"),
    [*(("tiny_built_lora_ready", n) for n in ADAPTED), ("tiny_built_lora_ready_all", "unet")],
)
def test_the_folded_graph_is_the_base_model_exactly(request, ready, name):
    folder = request.getfixturevalue(ready)
    component = read_manifest(folder).components[name]
    path = folder / component.file
    folded = write_folded_copy(path, component.lora_branches)
    try:
        assert folded.parent == path.parent and folded.name.startswith(".folded-")
        graph = onnx.load(str(folded)).graph
        assert {i.name for i in graph.input} - {"token_embedding"} == {
            s.name for s in component.inputs
        }
        factors = ("lora_down_t", "lora_up_t", "lora_down")
        assert not [n for n in graph.initializer if n.name.endswith(factors)]
        feeds = feeds_for(component, np.random.default_rng(0))
        for ours, theirs in zip(run(str(folded), feeds), run(str(path), feeds), strict=True):
            np.testing.assert_array_equal(ours, theirs)
    finally:
        folded.unlink()


def _slots_hold_the_deltas(folder, name) -> set[str]:
    """W + up @ down written into the slots computes what the branches fed the factors do;
    the slots' layouts."""
    component = read_manifest(folder).components[name]
    path = folder / component.file
    model = onnx.load(str(path))
    slots = weight_slots(model, component.lora_branches)
    assert sorted(slots) == sorted(b.module for b in component.lora_branches)
    rng = np.random.default_rng(1)
    feeds = feeds_for(component, rng)
    fed, weights = dict(feeds), {}
    initializers = {t.name: t for t in model.graph.initializer}
    for branch in component.lora_branches:
        down = 0.1 * rng.standard_normal((3, branch.features_in)).astype(np.float32)
        up = 0.1 * rng.standard_normal((branch.features_out, 3)).astype(np.float32)
        fed_down = down.reshape(3, *branch.down_shape[1:]) if branch.spatial else down.T.copy()
        fed[branch.down], fed[branch.up] = fed_down, up.T.copy()
        slot = slots[branch.module]
        weights[slot.initializer] = slot.with_delta(
            numpy_helper.to_array(initializers[slot.initializer]), up @ down
        )
    fold_branches(model, component.lora_branches)
    for tensor in model.graph.initializer:
        if tensor.name in weights:
            tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))
    base = run(str(path), feeds)[0]
    ours, theirs = run(model, feeds)[0], run(str(path), fed)[0]
    assert np.abs(theirs - base).max() > 100 * WEIGHTS_VS_FEEDS  # the adapters do something
    np.testing.assert_allclose(ours, theirs, atol=WEIGHTS_VS_FEEDS)
    return {s.layout for s in slots.values()}


@pytest.mark.parametrize("name", ADAPTED)
def test_each_slot_holds_its_modules_base_weight_in_its_layout(tiny_built_lora_ready, name):
    """W + up @ down written into the slots computes what the branches fed the factors do."""
    layouts = _slots_hold_the_deltas(tiny_built_lora_ready, name)
    assert MATMUL in layouts and (name != "unet" or len(layouts) == 2)  # 1x1 convs too


def test_kxk_conv_slots_take_the_delta_reshaped(tiny_built_lora_ready_all):
    """``--lora-ready all``: the ResNets' and samplers' 3x3 convs too, their delta
    up @ down [out, in * 9] reshaped to the conv weight [out, in, 3, 3], and the Linears on
    2-D inputs (time embedding, time_emb_proj), which export as Gemm with W [out, in]."""
    assert _slots_hold_the_deltas(tiny_built_lora_ready_all, "unet") == {
        MATMUL,
        GEMM_OUT_IN,
        CONV_1X1,
        CONV_KXK,
    }


def _unet(folder):
    component = read_manifest(folder).components["unet"]
    return component, onnx.load(str(folder / component.file), load_external_data=False)


def test_a_branch_not_in_the_exported_pattern_is_refused_by_name(tiny_built_lora_ready):
    component, model = _unet(tiny_built_lora_ready)
    branch = component.lora_branches[0]
    consumers = [n for n in model.graph.node if branch.down in n.input]
    consumers[0].op_type = "Gemm"
    with pytest.raises(
        ModelFolderError, match=rf"LoRA branch of {branch.module}: expected one MatMul"
    ):
        weight_slots(model, component.lora_branches)


def test_a_base_weight_shared_by_two_nodes_is_refused(tiny_built_lora_ready):
    component, model = _unet(tiny_built_lora_ready)
    slots = weight_slots(model, component.lora_branches)
    module, slot = next((m, s) for m, s in slots.items() if s.layout == MATMUL)
    other = next(s for s in slots.values() if s.layout == MATMUL and s is not slot)
    user = next(n for n in model.graph.node if other.initializer in n.input)
    user.input[list(user.input).index(other.initializer)] = slot.initializer
    with pytest.raises(ModelFolderError, match=rf"{slot.initializer} is shared by 2 nodes"):
        weight_slots(model, component.lora_branches)


class RecordingBuilder:
    """What TensorRT would parse: the graph at the request's path, while the build runs."""

    def __init__(self):
        self.graphs = {}

    def build(self, request):
        graph = onnx.load(str(request.onnx_path), load_external_data=False).graph
        self.graphs[request.onnx_path.name] = {
            "folder": request.onnx_path.parent.name,
            "inputs": sorted(i.name for i in graph.input),
        }
        request.timing_cache.write_text("timings")
        request.plan_path.write_text(json.dumps({"onnx": request.onnx_path.name}))


def test_engines_of_a_lora_ready_folder_are_built_from_the_folded_graphs(
    tiny_built_lora_ready, tmp_path
):
    folder = tmp_path / "lora-ready"
    shutil.copytree(tiny_built_lora_ready, folder)
    builder = RecordingBuilder()
    report = build(folder, builder=builder, refit=True, components=("unet", "vae_decoder"))
    manifest = report.manifest
    unet = manifest.components["unet"]
    assert builder.graphs[".folded-model.onnx"] == {
        "folder": "unet",
        "inputs": sorted(s.name for s in unet.inputs),
    }
    assert builder.graphs["model.onnx"]["folder"] == "vae_decoder"  # nothing to fold there
    assert not list(folder.rglob(".folded-*"))  # the copy goes after the build
    options = {e.component: e.options for e in manifest.engines}
    assert options["unet"]["lora_branches_folded"] == 1 and options["unet"]["refit"]
    assert "lora_branches_folded" not in options["vae_decoder"]
