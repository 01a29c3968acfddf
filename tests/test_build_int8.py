"""`sdrt build --precision int8`: the tiny model's U-Net quantized, recorded, within a PSNR."""

from __future__ import annotations

import numpy as np
import pytest
from sdrt.engines.compare import Thresholds, psnr

from sdrt import cli
from sdrt.manifest import read_manifest

# The same latents and settings through the int8 and the fp32 tiny folders (ORT CPU, 64 px,
# 10 steps, guidance 7.5): measured 36 dB (benchmarks/studies/int8_cost.py). Random weights make
# quality figures only a guide; the gate leaves 8 dB, a broken graph lands under 20 dB.
INT8_IMAGE_MIN_PSNR = 28.0  # dB
SIZE = 64


def _image(folder, latents, **options):
    from sdrt.pipeline import Pipeline

    return Pipeline.load(folder)(
        prompt="a red fox in snow",
        num_inference_steps=10,
        height=SIZE,
        width=SIZE,
        latents=latents,
        output_type="np",
        **options,
    ).images


def test_int8_build_records_its_quantization(tiny_built_int8):
    manifest = read_manifest(tiny_built_int8)
    unet = manifest.components["unet"]
    assert manifest.build.precision == "int8"
    assert unet.precision == "int8"
    others = {n: c.precision for n, c in manifest.components.items() if n != "unet"}
    assert set(others.values()) == {"fp32"}, others
    q = unet.quantization
    assert q["op_types"] == ["Conv", "MatMul", "Gemm"]
    assert q["activations"] == "uint8"
    assert any("conv_in" in n for n in q["kept_fp32"]["nodes"])
    assert any("conv_out" in n for n in q["kept_fp32"]["nodes"])
    cal = q["calibration"]
    assert cal["prompts"] == 3 and cal["size"] == manifest.build.min_size
    # PNDM (the tiny model's scheduler) calls the U-Net once more than its steps
    assert cal["feeds"] >= cal["prompts"] * cal["steps"]
    assert len(cal["timesteps"]) >= cal["steps"]
    assert unet.verification.reference == "onnxruntime-fp32" and unet.verification.passed
    assert unet.node_counts["int8"] > unet.node_counts["cleaned"]


def test_int8_graph_holds_int8_weights(tiny_built_int8):
    import onnx

    graph = onnx.load(str(tiny_built_int8 / "unet" / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) > 10


def test_int8_image_is_within_psnr_of_fp32(tiny_built, tiny_built_int8):
    latents = np.random.default_rng(3).standard_normal((1, 4, SIZE // 8, SIZE // 8))
    latents = latents.astype(np.float32)
    fp32, int8 = _image(tiny_built, latents), _image(tiny_built_int8, latents)
    assert np.abs(int8 - fp32).max() > 0  # the int8 U-Net did run
    assert psnr(int8, fp32) >= INT8_IMAGE_MIN_PSNR


def test_int8_check_fails_above_its_thresholds(tiny_built, tiny_built_int8):
    from sdrt.engines.int8_unet import compare_int8, record_unet_feeds

    feeds = record_unet_feeds(tiny_built, ["a cat"], steps=2, size=SIZE)
    tight = Thresholds(abs=1e-7, rel=1e-7)
    fp32, int8 = tiny_built / "unet" / "model.onnx", tiny_built_int8 / "unet" / "model.onnx"
    assert compare_int8(fp32, fp32, feeds, tight).passed
    failed = compare_int8(fp32, int8, feeds, tight)
    assert not failed.passed and failed.max_rel_error > 1e-7


def test_info_shows_the_quantization(tiny_built_int8, capsys):
    assert cli.main(["info", str(tiny_built_int8)]) == 0
    out = capsys.readouterr().out
    assert "quantization   unet: onnxruntime quantize_static, QDQ" in out
    assert "calibrated on 3 prompts x 6 steps at 64 px" in out
    assert "kept fp32:" in out and "conv_in" in out
    from sdrt.engines.int8_unet import cpu_lacks_vnni

    assert ("7-bit range: built on a CPU without VNNI" in out) is cpu_lacks_vnni()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precision", "int8", "--lora-ready"], "do not combine"),
        (["--calibration-prompts", "PROMPTS"], "are for precision int8"),
        (["--precision", "int8", "--calibration-prompts", "EMPTY"], "has no prompts"),
        (["--precision", "int8", "--calibration-prompts", "MISSING"], "readable UTF-8"),
    ],
)
def test_bad_int8_options_exit_2(tiny_source, tmp_path, capsys, extra, message):
    (tmp_path / "PROMPTS").write_text("a cat\n")
    (tmp_path / "EMPTY").write_text("\n  \n")
    extra = [str(tmp_path / a) if a in ("PROMPTS", "EMPTY", "MISSING") else a for a in extra]
    out = tmp_path / "out"
    assert cli.main(["build", str(tiny_source), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_vae_precision_int8_is_refused(tiny_source, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["build", str(tiny_source), "-o", str(tmp_path / "o"), "--vae-precision", "int8"])
    assert e.value.code == 2


@pytest.mark.parametrize(
    ("machine", "flags", "lacks"),
    [
        ("x86_64", "fpu sse avx avx2 fma", True),  # AVX2 only (an AMD EPYC of ours)
        ("x86_64", "fpu avx2 avx512f avx512_vnni", False),
        ("x86_64", "fpu avx2 avx_vnni", False),
        ("aarch64", "fp asimd asimddp", False),  # not x86: no VPMADDUBSW saturation
    ],
)
def test_weights_get_7_bits_only_on_x86_cpus_without_vnni(monkeypatch, machine, flags, lacks):
    import sdrt.engines.int8_unet as int8

    monkeypatch.setattr(int8.platform, "machine", lambda: machine)
    assert int8.cpu_lacks_vnni(f"processor\t: 0\nflags\t\t: {flags}\n") is lacks
    options = int8.Int8Options()
    monkeypatch.setattr(int8, "cpu_lacks_vnni", lambda: lacks)
    assert int8.reduce_range_for(options) is lacks
    assert int8.reduce_range_for(int8.Int8Options(reduce_range=False)) is False


def test_the_quantization_record_says_whether_weights_had_7_bits(tiny_built_int8):
    from sdrt.engines.int8_unet import cpu_lacks_vnni

    quantization = read_manifest(tiny_built_int8).components["unet"].quantization
    assert quantization["reduce_range"] is cpu_lacks_vnni()


@pytest.mark.parametrize("count", [6, 8])  # not a multiple of 4, and one
def test_calibration_ranges_cover_every_feed(tmp_path, count):
    """The activation range comes from all recorded feeds: the largest value is in the
    first one (onnxruntime's CalibMaxIntermediateOutputs dropped all but the last
    ``count % 4`` feeds, and raised "No data is collected" for a multiple of 4)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sdrt.engines.int8_unet import Int8Options, quantize_unet

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        "calibration",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(fp32))
    largest = 100.0
    feeds = [{"x": np.full((1, 8), largest if i == 0 else 1.0, np.float32)} for i in range(count)]
    quantize_unet(fp32, int8, feeds, Int8Options(reduce_range=False))
    quantized = onnx.load(str(int8))
    scales = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    x_scale = next(
        float(scales[n.input[1]])
        for n in quantized.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] == "x"
    )
    # uint8 over [0, largest] (MinMax takes 0 into the range): one step is largest / 255.
    assert x_scale == pytest.approx(largest / 255, rel=1e-3)
