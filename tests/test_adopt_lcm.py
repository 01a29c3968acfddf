"""sdrt adopt on an LCM-distilled folder: Optimum's LCM export gives the U-Net a fourth
input, ``timestep_cond`` (the guidance embedding), and copies the LCM scheduler config.

The folder is sdrt's own tiny-lcm build without its sdrt.json: the U-Net graph has the
input names Optimum's ORTLatentConsistencyModelPipeline export has (sample, timestep,
encoder_hidden_states, timestep_cond -> out_sample)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from adopt_helpers import RANGE, edit_graph

from sdrt.cli import main
from sdrt.guidance_embedding import GUIDANCE_EMBEDDING_INPUT
from sdrt.manifest import read_manifest
from sdrt.pipeline import Pipeline

SETTINGS = dict(height=64, width=64, seed=0, output_type="np")
SDRT_FILES = ("sdrt.json", ".sdrt-verified.json", "engines")


@pytest.fixture(scope="module")
def lcm_built(tmp_path_factory):
    pytest.importorskip("torch")
    from sdrt.export.random_model import init_random_model

    work = tmp_path_factory.mktemp("lcm-adopt")
    source = init_random_model("tiny-lcm", work / "src")
    assert main(["build", str(source), "-o", str(work / "built"), *RANGE]) == 0
    return work / "built"


@pytest.fixture(scope="module")
def lcm_onnx(lcm_built, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lcm-onnx") / "onnx"
    shutil.copytree(
        lcm_built, folder, ignore=lambda d, names: [n for n in names if n in SDRT_FILES]
    )
    return folder


@pytest.fixture(scope="module")
def lcm_adopted(lcm_onnx):
    out = lcm_onnx.parent / "adopted"
    assert main(["adopt", str(lcm_onnx), "-o", str(out), *RANGE]) == 0
    return out


def test_lcm_folder_is_adopted_with_its_recipe(lcm_adopted, lcm_built):
    adopted, built = read_manifest(lcm_adopted), read_manifest(lcm_built)
    unet = {s.name: s for s in adopted.components["unet"].inputs}
    assert list(unet[GUIDANCE_EMBEDDING_INPUT].shape)[1:] == [8]  # time_cond_proj_dim
    assert adopted.recipe is not None and adopted.recipe.name == built.recipe.name == "lcm"
    assert adopted.recipe.scheduler == "LCMScheduler"
    checks = {c.component: c for c in adopted.adoption.forward_checks}
    assert checks["unet"].input_shapes[GUIDANCE_EMBEDDING_INPUT] == (1, 8)
    assert checks["unet"].input_shapes["sample"][0] == 1  # one row: no CFG batch


def test_lcm_images_equal_the_build(lcm_adopted, lcm_built):
    got = Pipeline.load(lcm_adopted)("a fox", **SETTINGS).images
    want = Pipeline.load(lcm_built)("a fox", **SETTINGS).images
    assert np.array_equal(got, want)  # the same graph files, fed the same arrays


def test_guidance_embedding_without_a_fixed_width_is_refused(lcm_onnx, tmp_path, capsys):
    folder = tmp_path / "onnx"
    shutil.copytree(lcm_onnx, folder)

    def free_width(model):
        (spec,) = [i for i in model.graph.input if i.name == GUIDANCE_EMBEDDING_INPUT]
        spec.type.tensor_type.shape.dim[1].dim_param = "width"

    edit_graph(folder / "unet" / "model.onnx", free_width)
    assert main(["adopt", str(folder), "-o", str(tmp_path / "out"), *RANGE]) == 2
    err = capsys.readouterr().err
    assert f"guidance embedding {GUIDANCE_EMBEDDING_INPUT} as (batch, width)" in err
    assert not (tmp_path / "out").exists()
