"""`sdrt engines build|list` on a machine without TensorRT: clear one-line errors, listings."""

from __future__ import annotations

import builtins

import pytest
from engine_helpers import make_folder
from test_engines_build import FakeVerifier, build

from sdrt.cli import build_parser, main
from sdrt.commands.engines import options_from_args
from sdrt.errors import VerificationError


@pytest.fixture
def no_gpu_libraries(monkeypatch):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name in ("tensorrt", "cupy"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)


def test_build_without_tensorrt_is_one_line_and_exit_2(tmp_path, capsys, no_gpu_libraries):
    folder = tmp_path / "model"
    make_folder(folder)
    assert main(["engines", "build", str(folder), "--static", "256x256"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "sdrt engines: error: TensorRT engines need tensorrt and cupy "
        "(pip install 'sdrt[gpu]' on a machine with an NVIDIA GPU)"
    ]
    assert not (folder / "engines").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--static", "512"], "--static: expected WIDTHxHEIGHT such as 512x512, got '512'"),
        (["--static", "250x256"], "min width must be a positive multiple of 8, got 250"),
        (["--max-size", "2048"], "max height 2048 is outside the model folder's size range"),
        (["--optimization-level", "7"], "--optimization-level: expected 0..5, got 7"),
    ],
)
def test_bad_build_options_are_refused_before_anything_runs(tmp_path, capsys, argv, message):
    folder = tmp_path / "model"
    make_folder(folder)
    assert main(["engines", "build", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_options_from_arguments(tmp_path):
    folder = tmp_path / "model"
    manifest = make_folder(folder)
    args = build_parser().parse_args(
        [
            "engines",
            "build",
            str(folder),
            "--min-size",
            "256",
            "--max-size",
            "512",
            "--max-batch",
            "2",
            "--refit",
            "--components",
            "unet, vae_decoder",
            "--timing-cache",
            str(tmp_path / "t.cache"),
        ]
    )
    options = options_from_args(args, manifest)
    assert options.refit and options.components == ("unet", "vae_decoder")
    assert (options.shapes.min_height, options.shapes.max_width) == (256, 512)
    assert options.shapes.max_batch == 2 and options.shapes.guidance
    assert options.timing_cache == tmp_path / "t.cache"
    assert options.vae_fp32_fallback and options.fp16


def test_list_shows_records_and_failures(tmp_path, capsys, no_gpu_libraries):
    folder = tmp_path / "model"
    make_folder(folder)
    assert main(["engines", "list", str(folder)]) == 0
    assert "no engines" in capsys.readouterr().out
    with pytest.raises(VerificationError, match="unet"):
        build(folder, verifier=FakeVerifier({"unet": 0.5}))
    assert main(["engines", "list", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "not checked against this machine" in out
    assert "tensorrt unet fp16" in out and "FAILED verification (max abs error 0.5)" in out
    assert "tensorrt vae_decoder fp32" in out and "compute capability 8.9" in out
    # A static 256x256 build: the guided U-Net batch is 2 at every level.
    assert "sample [2, 4, 32, 32]..[2, 4, 32, 32]" in out


def test_sdrt_build_target_tensorrt_fails_before_exporting(tmp_path, capsys, no_gpu_libraries):
    source = tmp_path / "source"
    source.mkdir()
    out = tmp_path / "out"
    code = main(["build", str(source), "-o", str(out), "--target", "tensorrt"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "sdrt build: error: TensorRT engines need tensorrt and cupy "
        "(pip install 'sdrt[gpu]' on a machine with an NVIDIA GPU)"
    ]
    assert not out.exists()
