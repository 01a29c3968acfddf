"""Older exports' layout (diffusers' ONNX conversion script, Optimum before
``latent_parameters``, the Hub's ``onnx`` revisions), written by editing the committed
Optimum export's graphs: ``latent_sample`` from the VAE encoder, an int64 ``timestep`` of
shape [steps], the U-Net's weights in ``weights.pb``, an ``Onnx...`` pipeline class and no
component configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from adopt_helpers import RANGE, copy_export, edit_graph
from onnx import TensorProto, helper, numpy_helper

from sdrt.cli import main
from sdrt.manifest import read_manifest
from sdrt.pipeline import Pipeline

# The same graphs with a cast or a slice added: float32 rounding of the same ops.
IMAGE_TOLERANCE = 1e-5
SETTINGS = dict(num_inference_steps=4, height=64, width=64, seed=0, output_type="np")


def _latent_sample_mean(model):
    """latent_parameters (mean, log-variance) -> latent_sample, the mean's 4 channels."""
    output = model.graph.output[0]
    for node in model.graph.node:
        node.output[:] = ["params" if o == output.name else o for o in node.output]
    for name, values in (("starts", [0]), ("ends", [4]), ("axes", [1])):
        model.graph.initializer.append(numpy_helper.from_array(np.array(values), name))
    model.graph.node.append(
        helper.make_node("Slice", ["params", "starts", "ends", "axes"], ["latent_sample"])
    )
    output.name = "latent_sample"
    output.type.tensor_type.shape.dim[1].dim_value = 4


def _random_latent_sample(model):
    """As old exporters traced ``latent_dist.sample()``: mean plus noise drawn on every run."""
    _latent_sample_mean(model)
    model.graph.node[-1].output[0] = "mean"
    model.graph.node.append(helper.make_node("RandomNormalLike", ["mean"], ["noise"], scale=0.1))
    model.graph.node.append(helper.make_node("Add", ["mean", "noise"], ["latent_sample"]))


def _int64_steps_timestep(model):
    """timestep: a float scalar -> int64 of shape [steps], cast and reshaped inside."""
    (timestep,) = [v for v in model.graph.input if v.name == "timestep"]
    for node in model.graph.node:
        node.input[:] = ["timestep_scalar" if i == "timestep" else i for i in node.input]
    model.graph.input.remove(timestep)
    model.graph.input.insert(
        1, helper.make_tensor_value_info("timestep", TensorProto.INT64, ["steps"])
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array([], np.int64), "scalar"))
    model.graph.node.insert(
        0, helper.make_node("Cast", ["timestep"], ["timestep_float"], to=TensorProto.FLOAT)
    )
    model.graph.node.insert(
        1, helper.make_node("Reshape", ["timestep_float", "scalar"], ["timestep_scalar"])
    )


def _legacy(folder, vae_encoder_edit=_latent_sample_mean):
    edit_graph(folder / "vae_encoder" / "model.onnx", vae_encoder_edit)
    edit_graph(folder / "unet" / "model.onnx", _int64_steps_timestep, external_data="weights.pb")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "OnnxStableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    for config in folder.glob("*/config.json"):
        config.unlink()
    return folder


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    work = tmp_path_factory.mktemp("legacy")
    folder = _legacy(copy_export(work))
    out = work / "adopted"
    assert main(["adopt", str(folder), "-o", str(out), *RANGE]) == 0
    return out


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    out = tmp_path_factory.mktemp("current") / "adopted"
    assert main(["adopt", str(copy_export(out.parent, "src")), "-o", str(out), *RANGE]) == 0
    return out


def test_manifest_describes_the_legacy_graphs(legacy):
    manifest = read_manifest(legacy)
    assert manifest.adoption.layout == "optimum-legacy"
    unet = manifest.components["unet"]
    assert unet.external_data == "unet/weights.pb" and unet.external_data_sha256
    timestep = next(s for s in unet.inputs if s.name == "timestep")
    assert (timestep.dtype, timestep.shape) == ("int64", ("steps",))
    assert [s.name for s in manifest.components["vae_encoder"].outputs] == ["latent_sample"]
    assert any("int64 timestep" in n for n in manifest.adoption.notes)
    assert not any("not reproducible" in n for n in manifest.adoption.notes)
    # no configs: settings from the graphs or SD 1.x's defaults, and said so
    derived = manifest.adoption.derived
    assert {"latent_channels", "in_channels", "sample_size", "family"} <= set(derived)
    assert manifest.family == "sd1" and manifest.latent_channels == 4
    assert manifest.sample_size == 64 and manifest.build.opt_size == 256  # clamped to the range


def test_legacy_images_equal_the_current_layout(legacy, current):
    """PNDM's timesteps are integers, so the int64 timestep loses nothing."""
    old, new = Pipeline.load(legacy), Pipeline.load(current)
    assert (
        np.abs(old("a fox", **SETTINGS).images - new("a fox", **SETTINGS).images).max()
        < IMAGE_TOLERANCE
    )
    image = np.random.default_rng(1).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    img2img = {**SETTINGS, "image": image, "strength": 0.6}
    assert (
        np.abs(old("a fox", **img2img).images - new("a fox", **img2img).images).max()
        < IMAGE_TOLERANCE
    )


def test_random_latent_sample_is_noted(tmp_path):
    folder = _legacy(copy_export(tmp_path), vae_encoder_edit=_random_latent_sample)
    assert main(["adopt", str(folder), "--in-place", *RANGE]) == 0
    notes = read_manifest(folder).adoption.notes
    assert any("random sample of the latent distribution" in n for n in notes)
