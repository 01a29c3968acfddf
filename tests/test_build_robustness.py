"""sdrt build's guard rails: bad input, existing output, interrupted builds, reuse."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from sdrt.engines.compare import Thresholds
from sdrt.export import build as build_module
from sdrt.export.build import BuildConfig, build
from sdrt.export.source import FolderHasher

from sdrt import cli
from sdrt.errors import InputError
from sdrt.manifest import MANIFEST_NAME, read_manifest

EXIT_USAGE = 2


def run_cli(capsys, *argv):
    code = cli.main(["build", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line_error(code, err, message):
    assert code == EXIT_USAGE
    lines = [line for line in err.splitlines() if line.startswith("sdrt build: error:")]
    assert len(lines) == 1, err
    assert message in lines[0]
    assert "Traceback" not in err


def test_missing_source(tmp_path, capsys):
    code, err = run_cli(capsys, tmp_path / "nowhere", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "weights.bin").write_bytes(b"\0")
    code, err = run_cli(capsys, tmp_path / "src", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "is not a diffusers pipeline folder")


def test_unsupported_family(tmp_path, capsys, tiny_source):
    source = tmp_path / "flux"
    shutil.copytree(tiny_source, source)
    index = json.loads((source / "model_index.json").read_text())
    index["_class_name"] = "FluxPipeline"
    (source / "model_index.json").write_text(json.dumps(index))
    code, err = run_cli(capsys, source, "-o", tmp_path / "out")
    assert_one_line_error(code, err, "FluxPipeline, an unsupported model family")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-size", "512", "--max-size", "256"], "--min-size 512 is above --max-size 256"),
        (["--min-size", "100"], "--min-size must be a positive multiple of 8 pixels, got 100"),
        (["--max-size", "1020"], "--max-size must be a positive multiple of 8 pixels, got 1020"),
        (["--opt-size", "2048"], "--opt-size 2048 is outside --min-size..--max-size"),
        (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
        (["--opset", "11"], "--opset must be between 14 and 20, got 11"),
    ],
)
def test_bad_options(tmp_path, capsys, tiny_source, args, message):
    code, err = run_cli(capsys, tiny_source, "-o", tmp_path / "out", *args)
    assert_one_line_error(code, err, message)


def test_the_python_api_names_its_own_fields(tmp_path, tiny_source):
    # the CLI spells BuildConfig's fields as its flags; Python callers see the field names
    with pytest.raises(InputError, match=r"^opset must be between 14 and 20, got 11$"):
        BuildConfig(str(tiny_source), tmp_path / "out", opset=11)
    with pytest.raises(InputError, match=r"^min_size 512 is above max_size 256$"):
        BuildConfig(str(tiny_source), tmp_path / "out", min_size=512, max_size=256)


@pytest.mark.parametrize("output", [".", ".."])
def test_output_must_name_a_folder(tmp_path, capsys, monkeypatch, tiny_source, output):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, tiny_source, "-o", output)
    assert_one_line_error(
        code, err, f"output must name the folder to write (e.g. out/sd15), got {output!r}"
    )


def test_existing_output_needs_force(tmp_path, capsys, tiny_source, tiny_built):
    out = tmp_path / "out"
    shutil.copytree(tiny_built, out)
    before = (out / MANIFEST_NAME).read_bytes()
    code, err = run_cli(capsys, tiny_source, "-o", out)
    assert_one_line_error(code, err, "already exists; pass --force to replace it")
    assert (out / MANIFEST_NAME).read_bytes() == before


def test_foreign_folder_is_never_replaced(tmp_path, capsys, tiny_source):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, err = run_cli(capsys, tiny_source, "-o", out, "--force")
    assert_one_line_error(code, err, "is not an sdrt model folder")
    assert (out / "notes.txt").read_text() == "keep me"


def test_unchanged_rebuild_reuses_every_component(tmp_path, capsys, tiny_source, tiny_built):
    out = tmp_path / "again"
    shutil.copytree(tiny_built, out)
    code = cli.main(
        ["build", str(tiny_source), "-o", str(out), "--force"]
        + ["--min-size", str(TINY_MIN_SIZE), "--max-size", str(TINY_MAX_SIZE)]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    before, after = read_manifest(tiny_built), read_manifest(out)
    for name, comp in before.components.items():
        assert f"{name:15s} reused" in stdout
        assert after.components[name] == comp
        assert (out / comp.file).read_bytes() == (tiny_built / comp.file).read_bytes()
    actions = [
        line.split()[1] for line in stdout.splitlines() if line.split()[0] in before.components
    ]
    assert actions == ["reused"] * len(before.components)
    assert not list(tmp_path.glob(".again.*"))


def test_component_hash_follows_its_own_folder(tmp_path, tiny_source):
    source = tmp_path / "src"
    shutil.copytree(tiny_source, source)
    options = {"precision": "fp32"}
    before = {
        n: FolderHasher(source).folders((n,), options) for n in ("text_encoder", "unet", "vae")
    }
    config = json.loads((source / "unet" / "config.json").read_text())
    config["sample_size"] += 1
    (source / "unet" / "config.json").write_text(json.dumps(config))
    after = {
        n: FolderHasher(source).folders((n,), options) for n in ("text_encoder", "unet", "vae")
    }
    assert after["unet"] != before["unet"]
    assert after["text_encoder"] == before["text_encoder"]
    assert after["vae"] == before["vae"]
    assert FolderHasher(source).folders(("unet",), {"precision": "fp16"}) != after["unet"]


class Interrupted(Exception):
    pass


def test_interrupted_build_leaves_nothing_and_keeps_the_old_folder(
    tmp_path, monkeypatch, tiny_source, tiny_built
):
    def fail(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(build_module, "_export_component", fail)
    config = dict(source=str(tiny_source), min_size=TINY_MIN_SIZE, max_size=TINY_MAX_SIZE)
    with pytest.raises(Interrupted):
        build(BuildConfig(output=tmp_path / "new", **config))
    assert not (tmp_path / "new").exists()
    # A forced rebuild that fails (the U-Net changed, so it must be exported) keeps the old one.
    out = tmp_path / "old"
    shutil.copytree(tiny_built, out)
    before = (out / MANIFEST_NAME).read_bytes()
    with pytest.raises(Interrupted):
        build(BuildConfig(output=out, force=True, precision="fp16", **config))
    assert (out / MANIFEST_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no partial folders


def test_verification_failure_names_the_component(tmp_path, capsys, monkeypatch, tiny_source):
    from sdrt.export import verify

    # Thresholds no export can meet: the first component exported must fail the build.
    impossible = Thresholds(abs=-1.0, rel=-1.0)
    monkeypatch.setattr(verify, "THRESHOLDS", {"fp32": impossible, "fp16": impossible})
    code, err = run_cli(
        capsys,
        tiny_source,
        "-o",
        tmp_path / "out",
        "--min-size",
        TINY_MIN_SIZE,
        "--max-size",
        TINY_MAX_SIZE,
    )
    assert_one_line_error(
        code, err, "text_encoder (fp32) differs from eager PyTorch: max abs error"
    )
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())


def test_unreachable_hub_id(tmp_path, capsys, monkeypatch):
    # "org/name" that is no local path is tried on the Hub; offline, that fails in one line.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, "sdrt-tests/no-such-model", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "could not be fetched from the Hugging Face Hub")


def test_output_parents_are_created(tmp_path, capsys, tiny_source):
    output = tmp_path / "new" / "nested" / "tiny"
    code, err = run_cli(
        capsys, tiny_source, "-o", output, "--min-size", TINY_MIN_SIZE, "--max-size", TINY_MAX_SIZE
    )
    assert code == 0, err
    assert read_manifest(output).components["unet"].file == "unet/model.onnx"


def test_target_ort_cpu_saves_the_optimised_graphs_the_first_load_uses(
    tmp_path, capsys, tiny_source, tiny_built
):
    import sdrt

    out = tmp_path / "prepared"
    shutil.copytree(tiny_built, out, ignore=shutil.ignore_patterns("engines"))
    code = cli.main(
        ["build", str(tiny_source), "-o", str(out), "--force", "--target", "ort-cpu"]
        + ["--min-size", str(TINY_MIN_SIZE), "--max-size", str(TINY_MAX_SIZE)]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    manifest = read_manifest(out)
    saved = sorted((out / "engines" / "ort-cpu").glob("*/model.onnx"))
    assert len(saved) == len(manifest.components)
    assert f"saved {len(saved)} optimised ONNX Runtime CPU graphs" in stdout
    pipe = sdrt.Pipeline.load(out, backend="ort-cpu")
    assert pipe._session("unet").model_path in saved


def test_built_files_and_folders_follow_the_umask(tiny_built):
    """onnx writes external data files private (0o600); the build's output is not."""
    mask = os.umask(0)
    os.umask(mask)
    modes = {
        p.relative_to(tiny_built).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in tiny_built.rglob("*")
        if p.relative_to(tiny_built).parts[0] != "engines"  # later loads' (test_integrity.py)
    }
    assert modes["text_encoder/model.onnx_data"] == 0o666 & ~mask
    assert {m for p, m in modes.items() if (tiny_built / p).is_file()} == {0o666 & ~mask}
    assert {m for p, m in modes.items() if (tiny_built / p).is_dir()} == {0o777 & ~mask}
