"""fp16 builds (fp32 islands, fp32 I/O) and SDXL's two text encoders and extra U-Net inputs."""

from __future__ import annotations

import onnx
import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from sdrt.engines.compare import FP16
from sdrt.engines.fp16_graph import FP32_ISLAND_OPS
from sdrt.export.build import BuildConfig, build
from sdrt.export.verify import FP32_THRESHOLDS

from sdrt.integrity import check_model_files
from sdrt.manifest import manifest_from_dict, manifest_to_dict, read_manifest

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def tiny_fp16(tiny_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-fp16") / "tiny"
    config = BuildConfig(
        source=str(tiny_source),
        output=out,
        precision="fp16",
        min_size=TINY_MIN_SIZE,
        max_size=TINY_MAX_SIZE,
    )
    return build(config).output


def test_fp16_build_verifies_within_fp16_thresholds(tiny_fp16):
    manifest = read_manifest(tiny_fp16)
    check_model_files(tiny_fp16, manifest, "always")
    assert manifest.build.precision == manifest.build.vae_precision == "fp16"
    for comp in manifest.components.values():
        assert comp.precision == "fp16"
        assert comp.verification.passed
        assert comp.verification.threshold_rel == FP16.rel
        assert comp.node_counts["fp16"] >= comp.node_counts["cleaned"]
        assert {s.dtype for s in comp.inputs + comp.outputs} <= {"float32", "int64"}


def test_fp16_graph_has_fp16_weights_and_fp32_islands(tiny_fp16):
    model = onnx.load(str(tiny_fp16 / "unet" / "model.onnx"))
    weight_types = {t.data_type for t in model.graph.initializer if t.dims and len(t.dims) > 1}
    assert FLOAT16 in weight_types
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {FLOAT}
    producers = {out: node for node in model.graph.node for out in node.output}
    islands = [n for n in model.graph.node if n.op_type in FP32_ISLAND_OPS]
    assert islands  # GroupNorm and LayerNorm are there, and they stayed fp32:
    for node in islands:
        producer = producers.get(node.input[0])
        assert producer is not None and producer.op_type == "Cast"
        assert onnx.helper.get_attribute_value(producer.attribute[0]) == FLOAT


def test_tiny_xl_exports_both_text_encoders_and_added_conditions(tiny_xl_built):
    manifest = read_manifest(tiny_xl_built)
    assert manifest_from_dict(manifest_to_dict(manifest)) == manifest
    check_model_files(tiny_xl_built, manifest, "always")
    assert manifest.family == "sdxl"
    assert manifest.tokenizers == ("tokenizer", "tokenizer_2")
    assert set(manifest.components) == {
        "text_encoder",
        "text_encoder_2",
        "unet",
        "vae_decoder",
        "vae_encoder",
    }
    unet_inputs = {s.name: s.shape for s in manifest.components["unet"].inputs}
    assert unet_inputs["text_embeds"][0] == unet_inputs["time_ids"][0] == "batch"
    assert unet_inputs["time_ids"][1] == 6
    text_2 = [s.name for s in manifest.components["text_encoder_2"].outputs]
    assert text_2[:2] == ["text_embeds", "last_hidden_state"]
    options = manifest.family_options
    for name, output in options["prompt_embeds_outputs"].items():
        assert output in [s.name for s in manifest.components[name].outputs]
    assert options["force_zeros_for_empty_prompt"] is True
    # SDXL's VAE asks for force_upcast: it stays fp32 unless asked otherwise.
    assert manifest.build.vae_precision == "fp32"
    for comp in manifest.components.values():
        assert comp.verification.passed
        assert comp.verification.max_rel_error <= FP32_THRESHOLDS.rel


@pytest.fixture(scope="module")
def tiny_xl_built(tmp_path_factory):
    from sdrt.export.random_model import init_random_model

    source = init_random_model("tiny-xl", tmp_path_factory.mktemp("tiny-xl") / "src")
    config = BuildConfig(
        source=str(source),
        output=source.parent / "built",
        min_size=TINY_MIN_SIZE,
        max_size=TINY_MIN_SIZE + 8,
        max_batch=1,
    )
    return build(config).output
