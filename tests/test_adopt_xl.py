"""sdrt adopt on SDXL graphs: two text encoders (penultimate hidden states, the pooled
text_embeds) and the U-Net's text_embeds and time_ids inputs.

The folder is sdrt's own tiny-xl build without its sdrt.json: its graphs have the names
Optimum's SDXL export has (input_ids -> last_hidden_state, hidden_states.N, text_embeds;
sample, timestep, encoder_hidden_states, text_embeds, time_ids -> out_sample), checked on a
real Optimum export of the same model, which is 15 MB and so not committed (README)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from adopt_helpers import RANGE, edit_graph, tree

from sdrt.cli import main
from sdrt.manifest import read_manifest
from sdrt.pipeline import Pipeline

SETTINGS = dict(num_inference_steps=3, height=64, width=64, seed=0, output_type="np")
SDRT_FILES = ("sdrt.json", ".sdrt-verified.json", "engines")


@pytest.fixture(scope="module")
def xl_built(tiny_xl_built):
    return tiny_xl_built  # conftest's shared build: 64..256 px, seed 0


def _onnx_only(built, folder):
    shutil.copytree(built, folder, ignore=lambda d, names: [n for n in names if n in SDRT_FILES])
    return folder


@pytest.fixture(scope="module")
def xl_adopted(xl_built, tmp_path_factory):
    work = tmp_path_factory.mktemp("xl-adopted")
    source = _onnx_only(xl_built, work / "onnx")
    assert main(["adopt", str(source), "-o", str(work / "adopted"), *RANGE]) == 0
    return work / "adopted"


def test_xl_manifest_names_the_conditioning_outputs(xl_adopted, xl_built):
    adopted, built = read_manifest(xl_adopted), read_manifest(xl_built)
    assert adopted.family == "sdxl" and adopted.tokenizers == ("tokenizer", "tokenizer_2")
    for key in ("prompt_embeds_outputs", "pooled_prompt_embeds_output", "force_zeros_for_empty_prompt",
                "addition_time_embed_dim", "vae_force_upcast"):  # fmt: skip
        assert adopted.family_options[key] == built.family_options[key], key
    checks = {c.component: c for c in adopted.adoption.forward_checks}
    assert set(checks["unet"].input_shapes) == {
        "sample",
        "encoder_hidden_states",
        "text_embeds",
        "time_ids",
    }
    assert "text_embeds" in checks["text_encoder_2"].output_shapes


@pytest.mark.parametrize("negative_prompt", [None, "blurry"])
def test_xl_images_equal_the_build(xl_adopted, xl_built, negative_prompt):
    got = Pipeline.load(xl_adopted)("a fox", negative_prompt=negative_prompt, **SETTINGS).images
    want = Pipeline.load(xl_built)("a fox", negative_prompt=negative_prompt, **SETTINGS).images
    assert np.array_equal(got, want)  # the same graph files, fed the same arrays


def test_xl_without_hidden_states_is_refused(xl_built, tmp_path, capsys):
    folder = _onnx_only(xl_built, tmp_path / "onnx")

    def drop_hidden_states(model):
        keep = [o for o in model.graph.output if not o.name.startswith("hidden_states.")]
        del model.graph.output[:]
        model.graph.output.extend(keep)

    edit_graph(folder / "text_encoder_2" / "model.onnx", drop_hidden_states)
    before = tree(folder)
    capsys.readouterr()
    assert main(["adopt", str(folder), "-o", str(tmp_path / "out"), *RANGE]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "text_encoder_2: expected hidden_states.N outputs" in err
    assert tree(folder) == before and not (tmp_path / "out").exists()


def test_xl_without_its_second_text_encoder_is_refused(xl_built, tmp_path, capsys):
    folder = _onnx_only(xl_built, tmp_path / "onnx")
    shutil.rmtree(folder / "text_encoder_2")
    capsys.readouterr()
    assert main(["adopt", str(folder), "-o", str(tmp_path / "out"), *RANGE]) == 2
    assert "missing text_encoder_2/model.onnx" in capsys.readouterr().err
