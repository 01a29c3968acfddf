"""``sdrt build FILE.safetensors|.ckpt`` builds, offline, the folder a build of the same
weights from their diffusers folder gives: the same ONNX graphs bit for bit, the same images.

The files are made by ``sdrt init-model tiny --single-file`` with the seed of the
``tiny_source`` fixture, so they hold its weights.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE

import sdrt
from sdrt import cli
from sdrt.manifest import read_manifest, sha256_file

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# sdrt against diffusers' from_single_file pipeline: float32 rounding only, as in
# tests/test_pipeline_parity.py (worst measured there 5.3e-6).
MAX_IMAGE_DIFF = 1e-4
PROMPT = "a red fox in the snow"
SETTINGS = dict(num_inference_steps=3, guidance_scale=7.5, output_type="np")


def _refuse(*args, **kwargs):
    raise AssertionError(f"network connection attempted: {args}")


def _made_and_built(tmp_path_factory, suffix: str):
    """init-model --single-file, then build the file, both through the CLI and offline."""
    root = tmp_path_factory.mktemp(f"single-{suffix[1:]}")
    file = root / f"tiny{suffix}"
    out = root / "built"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", _refuse)
        patch.setattr(socket, "create_connection", _refuse)
        assert cli.main(["init-model", "tiny", "--random-weights", str(file), "--single-file"]) == 0
        sizes = ["--min-size", str(TINY_MIN_SIZE), "--max-size", str(TINY_MAX_SIZE)]
        assert cli.main(["build", str(file), "-o", str(out), *sizes]) == 0
    return file, out


@pytest.fixture(scope="module")
def safetensors_built(tmp_path_factory):
    return _made_and_built(tmp_path_factory, ".safetensors")


@pytest.fixture(scope="module")
def ckpt_built(tmp_path_factory):
    return _made_and_built(tmp_path_factory, ".ckpt")


def _graph_hashes(folder) -> dict[str, str]:
    return {name: c.sha256 for name, c in read_manifest(folder).components.items()}


def _latents():
    return np.random.default_rng(1).standard_normal((1, 4, 8, 8), dtype=np.float32)


def test_same_graphs_as_the_diffusers_folder_build(safetensors_built, tiny_built):
    assert _graph_hashes(safetensors_built[1]) == _graph_hashes(tiny_built)


def test_ckpt_builds_the_same_graphs(ckpt_built, tiny_built):
    assert _graph_hashes(ckpt_built[1]) == _graph_hashes(tiny_built)


def test_same_images_as_the_diffusers_folder_build(safetensors_built, tiny_built):
    ours = sdrt.Pipeline.load(safetensors_built[1])(PROMPT, latents=_latents(), **SETTINGS)
    folder = sdrt.Pipeline.load(tiny_built)(PROMPT, latents=_latents(), **SETTINGS)
    assert np.array_equal(ours.images, folder.images)


def test_images_match_diffusers_from_single_file(safetensors_built, tiny_source):
    file, built = safetensors_built
    reference = diffusers.StableDiffusionPipeline.from_single_file(
        str(file), config=str(tiny_source), local_files_only=True, safety_checker=None
    )
    reference.set_progress_bar_config(disable=True)
    theirs = reference(PROMPT, latents=torch.from_numpy(_latents()), **SETTINGS).images
    ours = sdrt.Pipeline.load(built)(PROMPT, latents=_latents(), **SETTINGS).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF


def test_manifest_records_the_file(safetensors_built, capsys):
    file, built = safetensors_built
    source = read_manifest(built).source
    assert source.path_or_id == str(file.resolve())
    assert source.content_sha256 == sha256_file(file)
    record = source.single_file
    assert (record["family"], record["config"], record["config_chosen"]) == (
        "sd1",
        "tiny",
        "detected",
    )
    assert (record["tokenizer"], record["prediction_type"]) == ("sdrt-clip-bpe", "epsilon")
    assert cli.main(["info", str(built)]) == 0
    out = capsys.readouterr().out
    assert str(file.resolve()) in out
    assert "single file    ldm layout, sd1; configs from architecture tiny (detected)" in out


def test_no_temporary_folder_is_left(safetensors_built):
    file, built = safetensors_built
    assert sorted(p.name for p in built.parent.iterdir()) == sorted(["built", file.name])


# ---------------------------------------------------------------------------- SD 2.x layout


@pytest.fixture(scope="module")
def sd2_like(tiny_source, tmp_path_factory):
    """The tiny weights as an SD 2.x pipeline (OpenCLIP-style gelu text encoder, SD 2.1's
    v-prediction DDIM scheduler), its single file in the SD 2.x layout (text encoder under
    cond_stage_model.model.), and that file built with --config FOLDER, offline."""
    import json
    import shutil

    from sdrt.export.architectures import SD21_SCHEDULER
    from sdrt.export.single_file_writer import write_single_file

    root = tmp_path_factory.mktemp("sd2-like")
    folder = root / "folder"
    shutil.copytree(tiny_source, folder)
    text_config = folder / "text_encoder" / "config.json"
    text_config.write_text(
        json.dumps({**json.loads(text_config.read_text()), "hidden_act": "gelu"})
    )
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(dict(SD21_SCHEDULER)))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(
        json.dumps({**index, "scheduler": ["diffusers", "DDIMScheduler"]})
    )
    file = write_single_file(folder, root / "sd2.safetensors", {})
    out = root / "built"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", _refuse)
        patch.setattr(socket, "create_connection", _refuse)
        sizes = ["--min-size", str(TINY_MIN_SIZE), "--max-size", str(TINY_MAX_SIZE)]
        assert cli.main(["build", str(file), "-o", str(out), "--config", str(folder), *sizes]) == 0
    return folder, file, out


def test_sd2_layout_is_detected_and_v_prediction_kept(sd2_like):
    from safetensors import safe_open

    folder, file, built = sd2_like
    with safe_open(str(file), framework="pt") as f:
        assert "cond_stage_model.model.token_embedding.weight" in f.keys()  # noqa: SIM118
    manifest = read_manifest(built)
    assert (manifest.family, manifest.prediction_type) == ("sd2", "v_prediction")
    record = manifest.source.single_file
    assert (record["family"], record["config_kind"], record["prediction_type_from"]) == (
        "sd2",
        "folder",
        "config",
    )
    assert record["tokenizer"] == f"folder:{folder.resolve()}"


def test_sd2_images_match_diffusers(sd2_like):
    folder, file, built = sd2_like
    reference = diffusers.StableDiffusionPipeline.from_single_file(
        str(file), config=str(folder), local_files_only=True, safety_checker=None
    )
    reference.set_progress_bar_config(disable=True)
    assert reference.scheduler.config.prediction_type == "v_prediction"
    theirs = reference(PROMPT, latents=torch.from_numpy(_latents()), **SETTINGS).images
    ours = sdrt.Pipeline.load(built)(PROMPT, latents=_latents(), **SETTINGS).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF
    folder_pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(folder), safety_checker=None
    )
    folder_pipe.set_progress_bar_config(disable=True)
    from_folder = folder_pipe(PROMPT, latents=torch.from_numpy(_latents()), **SETTINGS).images
    assert float(np.abs(ours - from_folder).max()) <= MAX_IMAGE_DIFF


# ---------------------------------------------------------------------------- SDXL


def test_xl_file_builds_to_diffusers_images(tmp_path):
    """tiny-xl as one file (OpenCLIP bigG layout under conditioner.embedders.1.), built
    offline with the architecture detected, gives the images of diffusers' XL pipeline on the
    diffusers folder of the same seed."""
    from sdrt.export.random_model import init_random_model

    file = tmp_path / "tiny-xl.safetensors"
    out = tmp_path / "built"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", _refuse)
        patch.setattr(socket, "create_connection", _refuse)
        assert (
            cli.main(["init-model", "tiny-xl", "--random-weights", str(file), "--single-file"]) == 0
        )
        sizes = ["--min-size", "64", "--max-size", "128"]
        assert cli.main(["build", str(file), "-o", str(out), *sizes]) == 0
    manifest = read_manifest(out)
    assert manifest.family == "sdxl"
    assert manifest.source.single_file["config"] == "tiny-xl"
    folder = init_random_model("tiny-xl", tmp_path / "folder", seed=0)
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(str(folder))
    reference.set_progress_bar_config(disable=True)
    theirs = reference(PROMPT, latents=torch.from_numpy(_latents()), **SETTINGS).images
    ours = sdrt.Pipeline.load(out)(PROMPT, latents=_latents(), **SETTINGS).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF
