"""sdrt adopt on a real Optimum export (tests/data/optimum_tiny, made from the `tiny` model
with seed 0 by Optimum, see its README): the manifest, the images against sdrt's own build
of the same weights, in place and `sdrt build ONNX_FOLDER`."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from adopt_helpers import OPTIMUM_TINY, RANGE, copy_export, tree

from sdrt.cli import main
from sdrt.errors import ModelFolderError
from sdrt.manifest import read_manifest, sha256_file
from sdrt.pipeline import Pipeline

# Both folders run fp32 graphs of the same weights in ONNX Runtime, traced by different
# exporters (Optimum's, sdrt's): float32 rounding of differently ordered ops. Measured
# 1.1e-6 (PNDM), 1.6e-6 (DPM++ 2M Karras), 1.7e-6 (img2img) on float images in [0, 1].
IMAGE_TOLERANCE = 1e-4
SETTINGS = dict(num_inference_steps=4, height=64, width=64, seed=0, output_type="np")


@pytest.fixture(scope="module")
def adopted(tmp_path_factory):
    out = tmp_path_factory.mktemp("adopted") / "tiny"
    assert main(["adopt", str(OPTIMUM_TINY), "-o", str(out), *RANGE]) == 0
    return out


def test_export_is_of_the_tiny_fixture_weights(tiny_source):
    """The committed export was made from `init-model tiny --seed 0`: the same weights as the
    tiny_source fixture (else the image comparisons below compare different models)."""
    readme = (OPTIMUM_TINY / "README.md").read_text(encoding="utf-8")
    recorded = dict(re.findall(r"`([\w/.]+\.safetensors)` sha256 `([0-9a-f]{64})`", readme))
    assert len(recorded) == 3
    for rel, digest in recorded.items():
        assert sha256_file(tiny_source / rel) == digest, f"{rel} differs from the exported weights"


def test_manifest_records_adoption_and_checks(adopted):
    manifest = read_manifest(adopted)
    adoption = manifest.adoption
    assert adoption is not None and adoption.layout == "optimum"
    assert adoption.exporter.startswith("pytorch ")
    assert any("not verified against PyTorch" in c for c in adoption.checked)
    assert [c.component for c in adoption.forward_checks] == [
        "text_encoder", "unet", "vae_decoder", "vae_encoder",
    ]  # fmt: skip
    unet_check = adoption.forward_checks[1]
    assert unet_check.input_shapes["sample"] == (2, 4, 8, 8)
    assert unet_check.output_shapes["out_sample"] == (2, 4, 8, 8)
    assert all(
        np.isfinite(c.max_abs_output) and c.max_abs_output > 0 for c in adoption.forward_checks
    )
    assert manifest.family == "sd1" and manifest.prediction_type == "epsilon"
    assert (manifest.sample_size, manifest.vae_scale_factor, manifest.latent_channels) == (8, 8, 4)
    assert manifest.build.size_multiple == 64 and manifest.build.opset == 18
    unet = manifest.components["unet"]
    assert unet.verification is None  # nothing was compared with PyTorch
    assert [(s.name, s.dtype, s.shape) for s in unet.inputs][1] == ("timestep", "float32", ())
    encoder_outputs = [s.name for s in manifest.components["vae_encoder"].outputs]
    assert encoder_outputs == ["latent_parameters"]
    for comp in manifest.components.values():
        assert comp.sha256 == sha256_file(adopted / comp.file)
        assert comp.sha256 == sha256_file(OPTIMUM_TINY / comp.file)
        # hard links to the source's files, not copies
        assert (adopted / comp.file).stat().st_ino == (OPTIMUM_TINY / comp.file).stat().st_ino


def test_source_folder_is_left_untouched(adopted):
    assert not (OPTIMUM_TINY / "sdrt.json").exists()
    assert not (OPTIMUM_TINY / "engines").exists()
    assert not list(adopted.parent.glob(".tiny.adopting-*"))


@pytest.mark.parametrize("scheduler", [None, "dpmpp_2m_karras"])
def test_images_equal_sdrt_build_and_repeat(adopted, tiny_built, scheduler):
    pipe, built = Pipeline.load(adopted), Pipeline.load(tiny_built)
    first = pipe("a red fox in snow", scheduler=scheduler, **SETTINGS).images
    again = pipe("a red fox in snow", scheduler=scheduler, **SETTINGS).images
    reference = built("a red fox in snow", scheduler=scheduler, **SETTINGS).images
    assert np.array_equal(first, again)
    assert first.std() > 0.01  # an image, not a flat field
    assert np.abs(first - reference).max() < IMAGE_TOLERANCE


def test_img2img_uses_latent_parameters_mean(adopted, tiny_built):
    image = np.random.default_rng(0).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    settings = {**SETTINGS, "height": None, "width": None}
    got = Pipeline.load(adopted)("a fox", image=image, strength=0.6, **settings).images
    want = Pipeline.load(tiny_built)("a fox", image=image, strength=0.6, **settings).images
    assert np.abs(got - want).max() < IMAGE_TOLERANCE


def test_generate_and_info_cli(adopted, tmp_path, capsys):
    out = tmp_path / "fox.png"
    assert main(["generate", str(adopted), "a fox", "-o", str(out), "--steps", "2"]) == 0
    assert out.is_file()
    assert main(["info", str(adopted)]) == 0
    info = capsys.readouterr().out
    assert (
        "adopted        optimum export (pytorch" in info and "not verified against PyTorch" in info
    )


def test_unadopted_folder_names_sdrt_adopt():
    with pytest.raises(
        ModelFolderError, match=r"has no sdrt.json \(adopt its ONNX graphs with `sdrt adopt"
    ):
        Pipeline.load(OPTIMUM_TINY)


def test_in_place_adds_only_the_manifest(tmp_path, capsys):
    folder = copy_export(tmp_path)
    before = tree(folder)
    hashes = {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest() for rel in before}
    assert main(["adopt", str(folder), "--in-place", *RANGE]) == 0
    after = tree(folder)
    assert set(after) - set(before) == {"sdrt.json", ".sdrt-verified.json"}
    assert {rel: after[rel] for rel in before} == before
    assert all(
        hashlib.sha256((folder / r).read_bytes()).hexdigest() == h for r, h in hashes.items()
    )
    assert Pipeline.load(folder)("a fox", **SETTINGS).images.shape == (1, 64, 64, 3)
    capsys.readouterr()
    assert main(["adopt", str(folder), "--in-place", *RANGE]) == 2  # already adopted
    assert "already has sdrt.json; pass --force" in capsys.readouterr().err


def test_build_of_an_onnx_folder_adopts_it(tmp_path, capsys):
    out = tmp_path / "built-from-onnx"
    assert main(["build", str(OPTIMUM_TINY), "-o", str(out), *RANGE]) == 0
    assert read_manifest(out).adoption.layout == "optimum"
    assert "not verified against PyTorch" in capsys.readouterr().out
    assert main(["build", str(OPTIMUM_TINY), "-o", str(out), "--force", "--precision", "fp16"]) == 2
    assert "--precision apply only to exporting a diffusers folder" in capsys.readouterr().err
    assert main(["build", str(OPTIMUM_TINY), "-o", str(out), *RANGE]) == 2  # exists, no --force
    assert main(["build", str(OPTIMUM_TINY), "-o", str(out), *RANGE, "--force"]) == 0


def test_adopting_needs_no_torch(tmp_path):
    """The runtime side (sdrt.adopt) adopts and generates without importing torch or onnx."""
    import subprocess
    import sys

    code = f"""
import sys
from sdrt.adopt import AdoptOptions, adopt
from sdrt.pipeline import Pipeline
adopt({str(OPTIMUM_TINY)!r}, {str(tmp_path / "out")!r}, options=AdoptOptions(64, 256, 1))
Pipeline.load({str(tmp_path / "out")!r})("a fox", num_inference_steps=1, output_type="np")
heavy = sorted(m for m in ("torch", "onnx", "diffusers", "transformers") if m in sys.modules)
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnx_header_matches_onnx(tmp_path):
    from collections import Counter

    import onnx

    from sdrt.onnx_header import read_onnx_header

    for graph in sorted(OPTIMUM_TINY.glob("*/model.onnx")):
        model = onnx.load(str(graph), load_external_data=False)
        header = read_onnx_header(graph)
        assert header.ir_version == model.ir_version
        assert header.producer == f"{model.producer_name} {model.producer_version}"
        assert header.opsets == {o.domain: o.version for o in model.opset_import}
        assert header.initializer_types == dict(
            Counter(t.data_type for t in model.graph.initializer)
        )
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelFolderError, match="not a readable ONNX model"):
        read_onnx_header(bad)


# fp16 weights and activations of the tiny U-Net against fp32, over 4 steps; measured
# 9.7e-4 on float images in [0, 1].
FP16_IMAGE_TOLERANCE = 2e-2


def test_fp16_weights_are_recorded_as_fp16(adopted, tiny_built_fp16, tmp_path):
    """A U-Net with fp16 weights behind fp32 inputs and outputs (sdrt's fp16 build of the
    same weights): the precision is the weights', which the inputs do not show."""
    import shutil

    from sdrt.onnx_header import FLOAT16, read_onnx_header

    folder = copy_export(tmp_path)
    shutil.copy(tiny_built_fp16 / "unet" / "model.onnx", folder / "unet" / "model.onnx")
    assert read_onnx_header(folder / "unet" / "model.onnx").initializer_types.get(FLOAT16, 0) > 0
    out = tmp_path / "out"
    assert main(["adopt", str(folder), "-o", str(out), *RANGE]) == 0
    manifest = read_manifest(out)
    assert manifest.build.precision == "fp16" and manifest.build.vae_precision == "fp32"
    unet = manifest.components["unet"]
    assert unet.precision == "fp16" and {s.dtype for s in unet.inputs} == {"float32"}
    assert manifest.components["text_encoder"].precision == "fp32"
    got = Pipeline.load(out)("a red fox in snow", **SETTINGS).images
    want = Pipeline.load(adopted)("a red fox in snow", **SETTINGS).images
    assert np.abs(got - want).max() < FP16_IMAGE_TOLERANCE


def test_committed_export_is_what_the_script_makes(tiny_source, tmp_path):
    """Where Optimum's venv exists (`sdrt bench --setup-optimum`), the script remakes the
    committed graphs byte for byte from the tiny fixture."""
    import subprocess

    from sdrt.benchmarks.contenders.optimum_env import OPTIMUM

    python = OPTIMUM.path(None) / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"Optimum's venv is not set up at {python.parent.parent}")
    script = OPTIMUM_TINY.parent / "make_optimum_tiny.py"
    out = tmp_path / "remade"
    subprocess.run(
        [str(python), str(script), str(tiny_source), str(out)], check=True, capture_output=True
    )
    for graph in sorted(OPTIMUM_TINY.glob("*/model.onnx")):
        rel = graph.relative_to(OPTIMUM_TINY)
        assert sha256_file(out / rel) == sha256_file(graph), rel
