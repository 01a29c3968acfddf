"""fp16 copies of fp32 graphs (TensorRT 11 builds only in the graph's own types)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from sdrt.engines.compare import FP16, sample_inputs, verify
from sdrt.engines.fp16_graph import write_fp16_copy

from sdrt.manifest import read_manifest


def _runner(path, component):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in component.outputs]
    return lambda feeds: dict(zip(names, session.run(names, dict(feeds)), strict=True))


def test_fp16_copy_keeps_the_io_contract_and_agrees_with_fp32(tiny_built, tmp_path):
    manifest = read_manifest(tiny_built)
    cases = {
        "unet": {"sample": (2, 4, 8, 8), "timestep": (1,), "encoder_hidden_states": (2, 77, 32)},
        "vae_decoder": {"latent_sample": (1, 4, 8, 8)},
    }
    for name, shapes in cases.items():
        component = manifest.components[name]
        copy = write_fp16_copy(tiny_built / component.file, tmp_path / name)
        model = onnx.load(str(copy))
        io_types = {
            v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)
        }
        assert set(io_types.values()) <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
        weights = [t.data_type for t in model.graph.initializer if len(t.dims) >= 2]
        assert weights and all(t == onnx.TensorProto.FLOAT16 for t in weights)
        # Normalisations stay fp32 islands (their inputs are cast back up).
        norms = [
            n
            for n in model.graph.node
            if n.op_type in ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
        ]
        casts_to_fp32 = {
            n.output[0]
            for n in model.graph.node
            if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT
        }
        assert all(n.input[0] in casts_to_fp32 for n in norms)
        result = verify(
            _runner(tiny_built / component.file, component),
            _runner(copy, component),
            component.inputs,
            (shapes,),
            FP16,
        )
        assert result.passed, (name, result)
        assert result.max_abs_error > 0  # it really computed in fp16


def test_sample_inputs_feed_the_copy(tiny_built, tmp_path):
    manifest = read_manifest(tiny_built)
    component = manifest.components["text_encoder"]
    copy = write_fp16_copy(tiny_built / component.file, tmp_path / "te")
    feeds = sample_inputs(component.inputs, {"input_ids": (2, 77)}, seed=0)
    outputs = _runner(copy, component)(feeds)
    assert outputs["last_hidden_state"].dtype == np.float32
    assert np.isfinite(outputs["last_hidden_state"]).all()
