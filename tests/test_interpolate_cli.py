"""``sdrt interpolate``: GIF, WebP, MP4 and PNG-folder walks read back with their frame
counts; keyframe frames are `sdrt generate`'s images; bad input exits 2 with one line on
stderr before the model loads."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.cli import main

FAST = ["--steps", "2", "--size", "64", "--no-progress"]
FRAMES = 5


@pytest.fixture
def no_load(monkeypatch):
    """Loading the model is an error: the checks under test must come before it."""

    def load(*args, **kwargs):
        raise RuntimeError("the model was loaded before the input was checked")

    monkeypatch.setattr(sdrt.Pipeline, "load", load)


def _walk(folder, out, *extra):
    args = ["interpolate", str(folder), "a red fox", "a blue cat", "--seeds", "1,2"]
    return main([*args, "--frames", str(FRAMES), "-o", str(out), *FAST, *extra])


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
def test_gif_and_webp_have_every_frame(tiny_built, tmp_path, capsys, suffix):
    out = tmp_path / f"walk{suffix}"
    assert _walk(tiny_built, out, "--fps", "10") == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as image:
        assert image.format == suffix[1:].upper()
        assert image.n_frames == FRAMES and image.size == (64, 64)
        assert image.is_animated
        if suffix == ".gif":
            assert image.info["duration"] == 100  # 10 fps
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_mp4_has_every_frame(tiny_built, tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")  # the video extra, in CI's dev
    out = tmp_path / "walk.mp4"
    assert _walk(tiny_built, out, "--fps", "8") == 0
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    frames = list(reader)
    assert tuple(meta["size"]) == (64, 64) and meta["fps"] == 8
    assert len(frames) == FRAMES
    assert [p.name for p in tmp_path.iterdir()] == ["walk.mp4"]


def test_a_folder_of_numbered_pngs_whose_keyframes_are_generate_s_images(
    tiny_built, tmp_path, capsys
):
    frames = tmp_path / "frames"  # no suffix: a folder, made
    args = ["--scheduler", "euler_a", "--negative-prompt", "blurry"]
    assert _walk(tiny_built, frames, *args) == 0
    names = [f"frame-{i:02d}.png" for i in range(FRAMES)]
    assert sorted(p.name for p in frames.iterdir()) == names
    assert capsys.readouterr().out.split() == [str(frames / n) for n in names]
    for prompt, seed, name in (("a red fox", 1, names[0]), ("a blue cat", 2, names[-1])):
        single = tmp_path / f"{seed}.png"
        generate = ["generate", str(tiny_built), prompt, "--seed", str(seed), "-o", str(single)]
        assert main([*generate, *FAST, *args]) == 0
        expected = np.asarray(Image.open(single).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(frames / name)), expected)
    middle = np.asarray(Image.open(frames / names[2]), dtype=np.int16)
    assert np.abs(middle - np.asarray(Image.open(frames / names[0]), dtype=np.int16)).max() > 0


def test_eta_reaches_every_frame_as_generate_s(tiny_built, tmp_path):
    """--eta under DDIM: the keyframes are `sdrt generate --eta`'s images, and the walk
    differs from eta 0's (DDIM then draws noise at every step)."""
    args = ["--scheduler", "ddim", "--eta", "0.8"]
    noisy, plain = tmp_path / "noisy", tmp_path / "plain"
    assert _walk(tiny_built, noisy, *args) == 0
    assert _walk(tiny_built, plain, "--scheduler", "ddim") == 0
    names = [f"frame-{i:02d}.png" for i in range(FRAMES)]
    for name in names:
        a = np.asarray(Image.open(noisy / name), dtype=np.int16)
        b = np.asarray(Image.open(plain / name), dtype=np.int16)
        assert np.abs(a - b).max() > 0, name
    single = tmp_path / "2.png"
    generate = ["generate", str(tiny_built), "a blue cat", "--seed", "2", "-o", str(single)]
    assert main([*generate, *FAST, *args]) == 0
    expected = np.asarray(Image.open(single).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(noisy / names[-1])), expected)


def test_frames_go_to_the_writer_as_they_come_and_are_not_held(tiny_built, tmp_path, monkeypatch):
    # The writer keeps weak references only: the frames alive at once are what the command
    # and the pipeline hold. They stay within one call's frames (2), whatever --frames says.
    import gc
    import weakref
    from contextlib import contextmanager

    from sdrt import animation_files

    alive, sizes = [], []

    class CountingWriter:
        frames = []  # weak references to every frame written

        def write(self, frame):
            self.frames.append(weakref.ref(frame))
            gc.collect()
            alive.append(sum(ref() is not None for ref in self.frames))
            sizes.append(frame.size)

    @contextmanager
    def open_animation(path, kind, fps, frames):
        yield CountingWriter()

    monkeypatch.setattr(animation_files, "open_animation", open_animation)
    args = ["interpolate", str(tiny_built), "a fox", "a cat", "--frames", "12"]
    args += ["--frames-per-call", "2", "-o", str(tmp_path / "walk.gif"), *FAST]
    assert main(args) == 0
    assert sizes == [(64, 64)] * 12
    assert max(alive) <= 2, alive


def test_progress_bar_over_frames_and_random_seeds_printed(tiny_built, tmp_path, capsys):
    out = tmp_path / "walk.gif"
    args = ["interpolate", str(tiny_built), "a fox", "a cat", "--seeds", "-1", "--frames", "3"]
    assert main([*args, "-o", str(out), "--steps", "1", "--size", "64"]) == 0
    err = capsys.readouterr().err
    assert "frames" in err and "3/3" in err
    (seeds,) = re.findall(r"^seeds: (\d+),(\d+)$", err, re.MULTILINE)
    assert seeds[0] == seeds[1]  # one random seed for every keyframe


def test_help_gives_a_default_for_every_option(capsys):
    import argparse

    from sdrt.cli import build_parser

    (subparsers,) = [
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    options = [a for a in subparsers.choices["interpolate"]._actions if a.option_strings]
    options = [a for a in options if a.dest != "help"]
    assert len(options) >= 15
    for action in options:
        assert "default: " in action.help, action.option_strings


BAD_ARGUMENTS = [
    (
        ["--frames", "0"],
        r"error: --frames: expected an integer >= 2 \(at least one frame per keyframe\), got 0",
    ),
    (
        ["--frames", "1000000"],
        r"error: --frames: expected at most 87381 frames for a .gif of 64x64 \(Pillow writes it "
        r"from every frame held in memory, 1024 MiB at most\), got 1000000; write .mp4 or a "
        r"folder of PNG frames for longer walks$",
    ),
    (
        ["--seeds", "1,2,3"],
        r"error: PROMPT: expected 1 or 3 \(one per keyframe; --seeds: 3\), got 2",
    ),
    (["--seeds", "1,x"], r"--seeds: expected comma-separated integers >= 0 .*, got '1,x'"),
    (["--seeds", "-2"], r"--seeds: expected comma-separated integers"),
    (["--fps", "0"], r"--fps: expected a number above 0, got 0"),
    (["--fps", "60"], r"--fps: expected at most 50 for a GIF"),
    (["--size", "60"], r"error: --height: expected a multiple of 8"),
    (["--height", "128"], r"error: --height: expected the same height as --size 64 \(64\)"),
    (["--steps", "0"], r"error: --steps: expected an integer >= 1, got 0"),
    (["--scheduler", "nope"], r"unknown scheduler 'nope'"),
    (["--guidance", "-1"], r"error: --guidance: expected a number >= 0"),
    (["--eta", "-0.5"], r"error: --eta: expected a number >= 0, got -0.5$"),
    (["--eta", "nan"], r"error: --eta: expected a finite number, got nan$"),
    (["--scheduler", "ddim", "--eta", "2"], r"error: DDIMScheduler: --eta must be in \[0, 1\]"),
    (["--strength", "0.5"], r"--strength: applies to a start image; pass --image too"),
    (["--image", "{tmp}/missing.png"], r"--image: no such file"),
    (
        ["--frames-per-call", "0"],
        r"error: --frames-per-call: expected an integer >= 1 \(frames per call\), got 0",
    ),
    (["-o", "{tmp}/walk.png"], r"-o: expected a name ending in .gif, .webp, .mp4, or a folder"),
    (["-o", "{tmp}/file"], r"-o: expected a folder for PNG frames, got .*, which is a file"),
    (["-o", "/proc/sdrt-walk.gif"], r"-o: expected a place where files can be written"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line_before_loading(
    tiny_built, tmp_path, capsys, no_load, extra, message
):
    (tmp_path / "file").write_text("not a folder")
    extra = [a.format(tmp=tmp_path) for a in extra]
    args = ["interpolate", str(tiny_built), "a fox", "a cat", "-o", str(tmp_path / "w.gif")]
    code = main([*args, "--steps", "2", "--size", "64", *extra])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sdrt interpolate: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written


def test_one_keyframe_exits_2(tiny_built, tmp_path, capsys, no_load):
    code = main(["interpolate", str(tiny_built), "a fox", "-o", str(tmp_path / "w.gif")])
    assert code == 2
    assert capsys.readouterr().err == (
        "sdrt interpolate: error: PROMPT: expected two or more keyframes (several prompts, "
        "seeds or latents), got 1\n"
    )


def test_not_a_model_folder_exits_2(tmp_path, capsys):
    code = main(["interpolate", str(tmp_path), "a", "b", "-o", str(tmp_path / "w.gif")])
    assert code == 2
    assert "is not an sdrt model folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["walk.gif", "walk.webp", "walk.mp4"])
def test_an_existing_animation_is_kept_without_force(tiny_built, tmp_path, capsys, no_load, name):
    if name.endswith(".mp4"):
        pytest.importorskip("imageio_ffmpeg")  # the video extra, checked before the file
    out = tmp_path / name
    out.write_bytes(b"the user's walk")
    assert _walk(tiny_built, out) == 2
    assert capsys.readouterr().err == (
        f"sdrt interpolate: error: -o: {str(out)!r} already exists; pass --force to replace it\n"
    )
    assert out.read_bytes() == b"the user's walk"


def test_existing_frames_are_kept_without_force(tiny_built, tmp_path, capsys, no_load):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "frame-03.png").write_bytes(b"an earlier walk's frame")
    assert _walk(tiny_built, frames) == 2
    err = capsys.readouterr().err
    assert err == (
        f"sdrt interpolate: error: -o: {str(frames / 'frame-03.png')!r} already exists; "
        "pass --force to replace it\n"
    )
    assert [p.name for p in frames.iterdir()] == ["frame-03.png"]


def test_force_replaces_existing_frames_and_other_files_stay(tiny_built, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "frame-03.png").write_bytes(b"an earlier walk's frame")
    (frames / "notes.txt").write_text("mine")
    assert _walk(tiny_built, frames, "--force") == 0
    assert Image.open(frames / "frame-03.png").size == (64, 64)
    assert (frames / "notes.txt").read_text() == "mine"
    assert len(list(frames.glob("frame-*.png"))) == FRAMES
