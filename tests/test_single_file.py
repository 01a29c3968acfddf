"""Single-file checkpoints: the LDM key conversion both ways, detection, and bad files.

The reverse conversion (export/ldm_keys.py, what ``init-model --single-file`` writes) is
checked by diffusers' own forward conversion giving back every tensor bit for bit; the
detection against diffusers' ``infer_diffusers_model_type`` on the full-size key sets
(made on torch's meta device: names and shapes, no memory).
"""

from __future__ import annotations

import json
import pickle
import socket

import pytest
from sdrt.export.single_file import (
    Checkpoint,
    SingleFileOptions,
    _pick_architecture,
    convert_to_folder,
    detect_family,
    load_checkpoint,
)
from sdrt.export.single_file_writer import (
    LOCAL_TOKENIZER,
    TOKENIZER_KEY,
    component_state_dicts,
    write_single_file,
)

from sdrt import cli
from sdrt.errors import InputError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def tiny_file(tiny_source, tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "tiny.safetensors"
    return write_single_file(tiny_source, path, {TOKENIZER_KEY: LOCAL_TOKENIZER})


@pytest.fixture(scope="module")
def tiny_xl_file(tiny_xl_source, tmp_path_factory):
    path = tmp_path_factory.mktemp("single-xl") / "tiny-xl.safetensors"
    return write_single_file(tiny_xl_source, path, {TOKENIZER_KEY: LOCAL_TOKENIZER})


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test (the conversion must stay offline)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _assert_same_tensors(ours: dict, theirs: dict, what: str) -> None:
    ours = {k: v for k, v in ours.items() if not k.endswith("position_ids")}
    theirs = {k: v for k, v in theirs.items() if not k.endswith("position_ids")}
    assert set(ours) == set(theirs), what
    different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert different == [], what


def test_diffusers_from_single_file_gives_back_every_tensor(tiny_source, tiny_file, no_network):
    """diffusers' pipeline loader, offline with the source folder as config."""
    theirs = diffusers.StableDiffusionPipeline.from_single_file(
        str(tiny_file), config=str(tiny_source), local_files_only=True, safety_checker=None
    )
    _, expected, _ = component_state_dicts(tiny_source)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_tensors(getattr(theirs, name).state_dict(), expected[name], name)


def test_diffusers_converts_the_xl_file_back(tiny_xl_source, tiny_xl_file, no_network):
    """Per component: diffusers' pipeline loader picks SDXL's text encoders by width, which
    the tiny model's two equally wide encoders defeat; its converters themselves are used."""
    from diffusers.loaders import single_file_utils as sfu
    from safetensors.torch import load_file

    _, expected, configs = component_state_dicts(tiny_xl_source)
    for name, cls in (("unet", diffusers.UNet2DConditionModel), ("vae", diffusers.AutoencoderKL)):
        model = cls.from_single_file(
            str(tiny_xl_file), config=str(tiny_xl_source), subfolder=name, local_files_only=True
        )
        _assert_same_tensors(model.state_dict(), expected[name], name)
    checkpoint = load_file(tiny_xl_file)
    clip = sfu.convert_ldm_clip_checkpoint(checkpoint)
    clip = {k.removeprefix("text_model."): v for k, v in clip.items()}
    _assert_same_tensors(clip, expected["text_encoder"], "text_encoder")
    import transformers

    model = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(**configs["text_encoder_2"])
    )
    bigg = sfu.convert_open_clip_checkpoint(model, checkpoint, "conditioner.embedders.1.model.")
    _assert_same_tensors(bigg, expected["text_encoder_2"], "text_encoder_2")


@pytest.mark.parametrize("which", ["tiny", "tiny-xl"])
def test_conversion_to_a_folder_gives_the_source_weights(
    which, tiny_source, tiny_file, tiny_xl_source, tiny_xl_file, tmp_path, no_network
):
    source, path = (tiny_source, tiny_file) if which == "tiny" else (tiny_xl_source, tiny_xl_file)
    record = convert_to_folder(path, SingleFileOptions(), tmp_path / "converted")
    assert (record["config"], record["config_chosen"]) == (which, "detected")
    assert record["tokenizer"] == LOCAL_TOKENIZER
    _, ours, _ = component_state_dicts(tmp_path / "converted")
    _, theirs, _ = component_state_dicts(source)
    for name in theirs:
        _assert_same_tensors(ours[name], theirs[name], name)
    for name in ("tokenizer", "tokenizer_2"):
        if (source / name).is_dir():
            for file in ("vocab.json", "merges.txt"):
                assert (tmp_path / "converted" / name / file).read_bytes() == (
                    source / name / file
                ).read_bytes()


def test_prediction_type_option_is_written_and_recorded(tiny_file, tmp_path, no_network):
    options = SingleFileOptions(prediction_type="v_prediction")
    record = convert_to_folder(tiny_file, options, tmp_path / "v")
    config = json.loads((tmp_path / "v" / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    assert (record["prediction_type"], record["prediction_type_from"]) == (
        "v_prediction",
        "--prediction-type",
    )


# ---------------------------------------------------------------------------- detection


def _full_size_ldm_keys(arch: str) -> dict:
    """The LDM-layout state dict of a full-size architecture, as meta tensors."""
    from sdrt.export.architectures import ARCHITECTURES, CLIP_VOCAB_SIZE
    from sdrt.export.ldm_keys import pipeline_to_ldm
    from sdrt.export.random_model import build_component, component_config

    state_dicts, configs = {}, {}
    for name, component in ARCHITECTURES[arch].components.items():
        configs[name] = component_config(component, CLIP_VOCAB_SIZE)
        with torch.device("meta"):
            state_dicts[name] = build_component(component, configs[name]).state_dict()
    family = {"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl"}[arch]
    return pipeline_to_ldm(family, state_dicts, configs)


@pytest.mark.parametrize(
    ("arch", "family", "diffusers_type", "prediction_type"),
    [
        ("sd15", "sd1", "v1", "epsilon"),
        ("sd21", "sd2", "v2", "v_prediction"),
        ("sdxl", "sdxl", "xl_base", "epsilon"),
    ],
)
def test_full_size_detection_agrees_with_diffusers(arch, family, diffusers_type, prediction_type):
    from diffusers.loaders.single_file_utils import (
        DIFFUSERS_DEFAULT_PIPELINE_PATHS,
        infer_diffusers_model_type,
    )
    from sdrt.export.architectures import ARCHITECTURES

    keys = _full_size_ldm_keys(arch)
    assert infer_diffusers_model_type(keys) == diffusers_type
    checkpoint = Checkpoint(path=f"{arch}.safetensors", tensors=keys, metadata={})
    assert detect_family(checkpoint) == family
    assert _pick_architecture(checkpoint, family) == arch
    # diffusers configures such a file from this Hub repo; sdrt's architecture is its config,
    # so the prediction type is the one diffusers' from_single_file gives.
    repo = DIFFUSERS_DEFAULT_PIPELINE_PATHS[diffusers_type]["pretrained_model_name_or_path"]
    assert repo.endswith(
        {"sd15": "stable-diffusion-v1-5", "sd21": "stable-diffusion-2-1", "sdxl": "xl-base-1.0"}[
            arch
        ]
    )
    scheduler = ARCHITECTURES[arch].scheduler
    assert scheduler.get("prediction_type", "epsilon") == prediction_type


# ---------------------------------------------------------------------------- bad input


def _build(capsys, source, tmp_path, *extra) -> tuple[int, str]:
    code = cli.main(["build", str(source), "-o", str(tmp_path / "out"), *map(str, extra)])
    return code, capsys.readouterr().err.strip()


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_truncated_safetensors(tiny_file, tmp_path, capsys):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    _one_line_error(*_build(capsys, bad, tmp_path), "not a readable safetensors file")
    assert not (tmp_path / "out").exists()


class _NotATensor:  # a pickled class instance: what weights_only refuses
    pass


def test_ckpt_with_other_objects_is_refused(tmp_path, capsys):
    bad = tmp_path / "code.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _NotATensor()}, bad)
    _one_line_error(*_build(capsys, bad, tmp_path), "refused to unpickle")


def test_raw_pickle_ckpt_is_refused(tmp_path, capsys):
    bad = tmp_path / "raw.ckpt"
    bad.write_bytes(pickle.dumps({"w": _NotATensor()}))
    code, err = _build(capsys, bad, tmp_path)
    _one_line_error(code, err, str(bad))


def test_truncated_ckpt(tiny_file, tmp_path, capsys):
    from safetensors.torch import load_file

    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": load_file(tiny_file)}, whole)
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _one_line_error(*_build(capsys, bad, tmp_path), "not a readable .ckpt")


def test_unknown_key_layout(tmp_path, capsys):
    from safetensors.torch import save_file

    bad = tmp_path / "diffusers-keys.safetensors"
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2)}, bad)
    _one_line_error(*_build(capsys, bad, tmp_path), "unknown key layout", "down_blocks.0")


def test_config_of_other_widths(tiny_file, tmp_path, capsys, no_network):
    _one_line_error(
        *_build(capsys, tiny_file, tmp_path, "--config", "sd15"),
        "its unet does not match the config",
        "weights missing",
    )


def test_config_of_another_family(tiny_file, tmp_path, capsys):
    _one_line_error(
        *_build(capsys, tiny_file, tmp_path, "--config", "sdxl"),
        "--config sdxl is an sdxl architecture",
    )


def test_single_file_options_need_a_single_file(tiny_source, tmp_path, capsys):
    _one_line_error(
        *_build(capsys, tiny_source, tmp_path, "--config", "tiny"),
        "apply to single-file sources",
    )


def test_full_size_file_without_a_tokenizer_says_what_is_missing(tmp_path, monkeypatch):
    """A real (not sdrt-made) SD 1.5 file: no tokenizer in the file nor in an empty cache."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    from sdrt.export.single_file import _write_tokenizers

    checkpoint = Checkpoint(path="real.safetensors", tensors={}, metadata={})
    with pytest.raises(InputError, match="carries no tokenizer.*--config FOLDER"):
        _write_tokenizers("sd15", checkpoint, tmp_path / "folder")


def test_load_checkpoint_unwraps_state_dict(tiny_file, tmp_path):
    from safetensors.torch import load_file

    nested = tmp_path / "nested.ckpt"
    tensors = load_file(tiny_file)
    torch.save({"state_dict": tensors, "global_step": 875000, "sdrt": {"x": "y"}}, nested)
    checkpoint = load_checkpoint(nested)
    assert set(checkpoint.tensors) == set(tensors)
    assert checkpoint.metadata == {"x": "y"}


def test_tokenizer_from_the_hub_cache_without_network(
    tiny_source, tmp_path, monkeypatch, no_network
):
    """A file sdrt did not write (no header) takes the published tokenizer from the cache."""
    import huggingface_hub.constants
    from sdrt.export.single_file import HUB_TOKENIZERS, _write_tokenizers

    cache = tmp_path / "hub"
    repo, subfolder = HUB_TOKENIZERS["sd15"]["tokenizer"]
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0" * 40)
    snapshot = repo_dir / "snapshots" / ("0" * 40) / subfolder
    snapshot.mkdir(parents=True)
    for file in ("vocab.json", "merges.txt"):
        (snapshot / file).write_bytes((tiny_source / "tokenizer" / file).read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    checkpoint = Checkpoint(path="real.safetensors", tensors={}, metadata={})
    used = _write_tokenizers("sd15", checkpoint, tmp_path / "folder")
    assert used == f"hub-cache:{repo}/{subfolder}"
    for file in ("vocab.json", "merges.txt"):
        assert (tmp_path / "folder" / "tokenizer" / file).read_bytes() == (
            tiny_source / "tokenizer" / file
        ).read_bytes()


def test_fp16_file_converts_to_its_float32_values(tiny_source, tiny_file, tmp_path, no_network):
    """Most published files are fp16: each weight is its fp16 value, held in float32."""
    from safetensors.torch import load_file, save_file

    half = tmp_path / "half.safetensors"
    save_file(
        {k: v.half() for k, v in load_file(tiny_file).items()},
        half,
        metadata={TOKENIZER_KEY: LOCAL_TOKENIZER},
    )
    convert_to_folder(half, SingleFileOptions(), tmp_path / "converted")
    _, ours, _ = component_state_dicts(tmp_path / "converted")
    _, theirs, _ = component_state_dicts(tiny_source)
    for name in theirs:
        rounded = {k: v.half().float() for k, v in theirs[name].items() if v.is_floating_point()}
        floats = {k: v for k, v in ours[name].items() if k in rounded}
        assert all(v.dtype == torch.float32 for v in floats.values())
        _assert_same_tensors(floats, rounded, name)


def test_init_model_single_file_needs_a_checkpoint_suffix(tmp_path, capsys):
    code = cli.main(
        ["init-model", "tiny", "--random-weights", str(tmp_path / "m.bin"), "--single-file"]
    )
    _one_line_error(code, capsys.readouterr().err.strip(), "must end in .safetensors or .ckpt")
    assert list(tmp_path.iterdir()) == []


def test_the_written_file_follows_the_umask(tiny_source, tmp_path):
    """mkstemp makes a private (0o600) file; the checkpoint gets what open() would give."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_single_file(tiny_source, tmp_path / "tiny.safetensors", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]
