"""`sdrt build --precision int8 --int8-method nncf`: the tiny U-Net quantized by NNCF into an
OpenVINO IR beside its fp32 ONNX graph, checked, recorded, and run by the openvino backend."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import _build_tiny
from sdrt.engines import int8_unet, int8_unet_nncf
from sdrt.engines.compare import psnr
from sdrt.engines.int8_unet import Int8Options, cpu_lacks_vnni
from test_backend_openvino import FP32_MAX_PIXEL_DIFFERENCE
from test_build_int8 import INT8_IMAGE_MIN_PSNR, SIZE

import sdrt
from sdrt import cli
from sdrt.errors import InputError, ModelFolderError
from sdrt.manifest import read_manifest

pytest.importorskip("nncf")
pytest.importorskip("openvino")
from sdrt.backends.openvino import OpenVinoOptions  # noqa: E402

CACHED = {"deep_cache_interval": 3, "deep_cache_branch": 0}


@pytest.fixture(scope="module")
def tiny_nncf(tiny_source, tmp_path_factory):
    """int8 by NNCF, with DeepCache's branch 0 (the U-Net with its feature outputs)."""
    return _build_tiny(
        tiny_source,
        tmp_path_factory,
        "tiny-nncf",
        precision="int8",
        int8_method="nncf",
        calibration_prompts=("a red fox in snow", "an astronaut riding a horse"),
        deep_cache_branches=(0,),
    )


def _latents(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32)


def _image(pipe, **options):
    return pipe(
        prompt="a red fox in snow",
        num_inference_steps=10,
        height=SIZE,
        width=SIZE,
        latents=_latents(),
        output_type="np",
        **options,
    ).images


def test_the_ir_is_recorded_beside_the_fp32_graph(tiny_nncf):
    manifest = read_manifest(tiny_nncf)
    unet = manifest.components["unet"]
    assert manifest.build.precision == "int8"
    assert unet.precision == "fp32" and unet.quantization is None  # the ONNX graph is fp32
    ir = unet.openvino
    assert ir.file == "unet/openvino_model.xml" and ir.weights == "unet/openvino_model.bin"
    assert (tiny_nncf / ir.file).is_file() and (tiny_nncf / ir.weights).is_file()
    assert ir.precision == "int8"
    assert ir.verification.passed and ir.verification.reference == "onnxruntime-fp32"
    assert len(ir.verification.cases) == 4  # 2 held-out prompts, first and last step
    assert ir.quantization["method"].startswith("nncf quantize (OpenVINO)")
    assert ir.quantization["calibration"]["prompts"] == 2
    assert ir.quantization["overflow_fix"] == ("enable" if cpu_lacks_vnni() else "first_layer_only")
    assert any("conv_in" in n for n in ir.quantization["kept_fp32"]["nodes"])
    for name, component in manifest.components.items():
        assert component.openvino is None or name == "unet"


def test_the_ir_holds_int8_weights(tiny_nncf):
    import openvino as ov

    model = ov.Core().read_model(str(tiny_nncf / "unet/openvino_model.xml"))
    ops = model.get_ops()
    int8_weights = [
        op
        for op in ops
        if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i8
    ]
    assert len(int8_weights) > 10
    assert sum(op.get_type_name() == "FakeQuantize" for op in ops) > 10  # activations


def test_openvino_runs_the_ir_within_the_int8_psnr_of_fp32(tiny_nncf):
    exact = sdrt.Pipeline.load(tiny_nncf, backend="ort-cpu")  # the fp32 ONNX graphs
    fast = sdrt.Pipeline.load(tiny_nncf, backend="openvino")
    assert fast._session("unet").graph == "unet/openvino_model.xml"
    for options in ({}, CACHED):
        reference, image = _image(exact, **options), _image(fast, **options)
        assert np.abs(image - reference).max() > 0  # the int8 U-Net did run
        assert psnr(image, reference) >= INT8_IMAGE_MIN_PSNR, options


def test_ort_cpu_and_use_ir_false_run_the_exact_fp32_graph(tiny_nncf, tiny_built):
    plain = _image(sdrt.Pipeline.load(tiny_built, backend="ort-cpu"))
    ort = _image(sdrt.Pipeline.load(tiny_nncf, backend="ort-cpu"))
    np.testing.assert_array_equal(ort, plain)  # same weights, same graph
    onnx_on_openvino = sdrt.Pipeline.load(
        tiny_nncf, backend="openvino", backend_options=OpenVinoOptions(use_ir=False)
    )
    assert onnx_on_openvino._session("unet").graph == "unet/model.onnx"
    assert np.abs(_image(onnx_on_openvino) - plain).max() <= FP32_MAX_PIXEL_DIFFERENCE


def test_info_shows_the_ir_and_its_quantization(tiny_nncf, capsys):
    assert cli.main(["info", str(tiny_nncf)]) == 0
    out = capsys.readouterr().out
    assert "openvino       unet: unet/openvino_model.xml (int8, OpenVINO" in out
    assert "the ONNX graph stays fp32" in out
    assert "quantization   unet: nncf quantize (OpenVINO), mixed preset" in out
    assert "checked against the fp32 U-Net on 4 held-out feeds" in out
    assert ("7-bit range, NNCF overflow fix: built on a CPU without VNNI" in out) is (
        cpu_lacks_vnni()
    )


def test_a_changed_ir_is_caught_at_load(tiny_nncf, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_nncf, copy)
    weights = copy / "unet/openvino_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="openvino_model.bin"):
        sdrt.Pipeline.load(copy, backend="openvino", verify_files="always")


def test_nncf_method_without_int8_exits_2(tiny_source, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["build", str(tiny_source), "-o", str(out), "--int8-method", "nncf"]) == 2
    err = capsys.readouterr().err
    assert "int8 method 'nncf' is for precision int8, got precision 'fp32'" in err
    assert "Traceback" not in err and not out.exists()


def test_without_nncf_installed_the_build_names_the_install(monkeypatch, tiny_source, tmp_path):
    import importlib.util

    from sdrt.export.build import BuildConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a)
    )
    with pytest.raises(InputError, match=r"needs nncf.*pip install 'sdrt\[nncf\]'"):
        BuildConfig(
            source=str(tiny_source), output=tmp_path / "o", precision="int8", int8_method="nncf"
        )


@pytest.mark.parametrize(("lacks_vnni", "expected"), [(True, "ENABLE"), (False, "FIRST_LAYER")])
def test_the_overflow_fix_follows_the_vnni_probe(monkeypatch, lacks_vnni, expected):
    """7-bit weights in every layer where the build CPU lacks VNNI (its AVX2 u8 x s8 kernels
    saturate), NNCF's default elsewhere; and each choice is one NNCF knows."""
    import nncf

    monkeypatch.setattr(int8_unet, "cpu_lacks_vnni", lambda: lacks_vnni)
    choice = int8_unet_nncf.overflow_fix_for(Int8Options())
    assert nncf.OverflowFix(choice) is getattr(nncf.OverflowFix, expected)
    # an explicit reduce_range wins over the probe, as for the ONNX Runtime method
    assert int8_unet_nncf.overflow_fix_for(Int8Options(reduce_range=not lacks_vnni)) == (
        "first_layer_only" if lacks_vnni else "enable"
    )
