"""What the CLI says as a newcomer meets it: arguments checked before anything heavy loads,
the subcommand's own usage, warnings and progress as lines, sizes and steps as asked."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
from engine_helpers import make_folder
from PIL import Image

from sdrt.cli import main
from sdrt.errors import InputError
from sdrt.manifest import write_manifest

# --------------------------------------------------------------- build: checks come first

# Runs `sdrt build` on each argument list in one fresh interpreter and reports, for each,
# the exit code, the error line and whether torch had been imported when it returned.
CHECKS_BEFORE_TORCH = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from sdrt import cli

    results = []
    for args in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["build", *args])
        results.append([code, err.getvalue(), "torch" in sys.modules])
    print(json.dumps(results))
    """
)


def test_build_checks_every_argument_before_torch_loads(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    common = [str(source), "-o", str(tmp_path / "out")]
    cases = [
        (["--opset", "99"], "--opset must be between 14 and 20, got 99"),
        (["--tiny-vae", "/nope"], "--tiny-vae '/nope' does not exist"),
        (["--tiny-vae", str(tmp_path / "out.txt")], "is a file; expected a diffusers"),
        (["--lora", "garbage"], "--lora: LoRA file 'garbage' does not exist"),
        (["--embedding", str(tmp_path / "missing.pt")], "missing.pt"),
        (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
        (["--precision", "int8", "--calibration-prompts", str(tmp_path / "none.txt")], "none.txt"),
        (["--deep-cache-branches", "1"], "--deep-cache-branches: expected with --deep-cache"),
    ]
    (tmp_path / "out.txt").write_text("a file")
    argument_lists = [common + extra for extra, _ in cases]
    argument_lists.append([str(tmp_path / "nowhere"), "-o", str(tmp_path / "out")])
    messages = [message for _, message in cases] + ["nowhere' does not exist"]
    run = subprocess.run(
        [sys.executable, "-c", CHECKS_BEFORE_TORCH, json.dumps(argument_lists)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    for (code, err, torch_loaded), message in zip(json.loads(run.stdout), messages, strict=True):
        assert code == 2, err
        assert err.startswith("sdrt build: error: ") and err.count("\n") == 1, err
        assert message in err
        assert not torch_loaded, f"torch was imported before saying: {err}"
    assert not (tmp_path / "out").exists()


def test_build_progress_into_a_file_is_one_line_per_stage(tmp_path, capsys, monkeypatch):
    from sdrt.export import build as build_module

    def build_held(config, held, progress=None):
        for component in ("text_encoder", "unet"):
            progress(component, "exporting")
            progress(component, "verifying")
        raise InputError("stopped by the test")

    monkeypatch.setattr(build_module, "build_held", build_held)
    (tmp_path / "src").mkdir()
    assert main(["build", str(tmp_path / "src"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err  # not a terminal: no bar redrawn with carriage returns
    assert "\r" not in err
    assert err.splitlines() == [
        "text_encoder: exporting",
        "text_encoder: verifying",
        "unet: exporting",
        "unet: verifying",
        "sdrt build: error: stopped by the test",
    ]


# ------------------------------------------------------------------ usage of subcommands


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        ("generate", ["a fox"]),
        ("interpolate", ["a fox", "a cat"]),
        ("build", ["-o", "out"]),
        ("info", []),
    ],
)
def test_a_mistyped_option_prints_the_subcommand_s_usage(tmp_path, capsys, command, arguments):
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(tmp_path), *arguments, "--stepz", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: sdrt {command} ")
    assert f"sdrt {command}: error: unrecognized arguments: --stepz" in err


# ------------------------------------------------------------------------------- info


def test_info_says_the_default_size_and_the_built_range(tmp_path, capsys):
    folder = tmp_path / "model"
    manifest = make_folder(folder)  # a model whose own sample size is 256 px
    build = dataclasses.replace(manifest.build, min_size=128, max_size=512, opt_size=128)
    write_manifest(folder, dataclasses.replace(manifest, build=build))
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "native size" not in out
    assert (
        "family         sd1, prediction epsilon, default size 128 px (sizes 128..512 px; "
        "the model's sample size is 256 px)"
    ) in out


# --------------------------------------------------------------------------- generate


def test_a_long_prompt_is_one_warning_line(tiny_built, tmp_path, capsys):
    out = tmp_path / "fox.png"
    prompt = "a red fox in the snow " * 30
    args = ["generate", str(tiny_built), prompt, "-o", str(out), "--steps", "1"]
    assert main([*args, "--size", "64", "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        "sdrt generate: warning: prompt truncated to the text encoder's 77 tokens: "
    )
    assert "tokens dropped (at most 75 tokens of text fit): '" in err[0]
    assert "fox" in err[0].rpartition(": ")[2]  # what was dropped
    assert ".py" not in err[0] and "Warning" not in err[0]  # no source path, no class


def test_width_and_height_set_the_size(tiny_built, tmp_path):
    out = tmp_path / "tall.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "1"]
    assert main([*args, "--width", "64", "--height", "128", "--no-progress"]) == 0
    assert Image.open(out).size == (64, 128)
    out = tmp_path / "both.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "1"]
    assert main([*args, "--size", "128x64", "--width", "128", "--no-progress"]) == 0
    assert Image.open(out).size == (128, 64)  # agreeing values are no conflict


def test_pndm_progress_counts_the_steps_asked_for(tiny_built, tmp_path, capsys):
    # PNDM runs 4 U-Net calls for 3 steps (its warm-up): the bar says 3, as diffusers' does.
    out = tmp_path / "fox.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "3"]
    assert main([*args, "--size", "64", "--scheduler", "pndm"]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "/4" not in err
