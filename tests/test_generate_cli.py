"""``sdrt generate``: writes PNGs (txt2img, img2img, inpainting); bad input exits 2 with one line."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from sdrt.cli import main

FAST = ["--steps", "2", "--size", "64x64", "--seed", "0", "--no-progress"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "image.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask, mode="L").save(folder / "mask.png")
    Image.fromarray(mask[:32], mode="L").save(folder / "small_mask.png")
    (folder / "not_an_image.png").write_text("hello")
    return folder


def test_txt2img_writes_a_png(tiny_built, tmp_path, capsys):
    out = tmp_path / "out" / "fox.png"  # the folder is made
    code = main(["generate", str(tiny_built), "a red fox", "-o", str(out), *FAST])
    assert code == 0
    assert Image.open(out).size == (64, 64)
    assert capsys.readouterr().out.strip() == str(out)
    assert [p.name for p in out.parent.iterdir()] == ["fox.png"]  # no temporary file left


def test_progress_bar_on_stderr(tiny_built, tmp_path, capsys):
    out = tmp_path / "fox.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "3"]
    args += ["--size", "64x64", "--scheduler", "euler"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "denoising" in err and "3/3" in err


def test_img2img_inpaint_and_batch(tiny_built, inputs, tmp_path):
    out = tmp_path / "edit.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), *FAST]
    args += ["--image", str(inputs / "image.png"), "--mask", str(inputs / "mask.png")]
    args += ["--strength", "0.75", "--batch", "2", "--negative-prompt", "blurry"]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit-0.png", "edit-1.png"]
    original = np.asarray(Image.open(inputs / "image.png"), dtype=np.int16)
    edited = np.asarray(Image.open(tmp_path / "edit-0.png"), dtype=np.int16)
    assert edited.shape == original.shape
    assert np.abs(edited - original).max() > 0


BAD_ARGUMENTS = [
    (["--size", "64"], r"--size: expected WIDTHxHEIGHT such as 512x768, got '64'"),
    (["--size", "60x64"], r"width: expected a multiple of"),
    (["--steps", "0"], r"num_inference_steps: expected an integer >= 1, got 0"),
    (["--scheduler", "nope"], r"unknown scheduler 'nope'"),
    (["--image", "{inputs}/missing.png"], r"--image: no such file"),
    (["--image", "{inputs}/not_an_image.png"], r"--image: cannot read .* as an image"),
    (
        ["--image", "{inputs}/image.png", "--strength", "0"],
        r"strength: expected a number in \(0, 1\]",
    ),
    (["--mask", "{inputs}/mask.png"], r"mask_image: inpainting needs the image to repaint"),
    (
        ["--image", "{inputs}/image.png", "--mask", "{inputs}/small_mask.png"],
        r"mask_image: expected the size of image, 64x64, got 64x32",
    ),
    (["-o", "{tmp}"], r"-o: expected a .png file name"),
    (["-o", "{tmp}/x.jpg"], r"-o: expected a .png file name"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line(tiny_built, inputs, tmp_path, capsys, extra, message):
    extra = [a.format(inputs=inputs, tmp=tmp_path) for a in extra]
    args = ["generate", str(tiny_built), "a fox", "-o", str(tmp_path / "out.png")]
    args += ["--steps", "2", "--size", "64x64", "--no-progress"]
    code = main(args + extra)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sdrt generate: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out.png").exists()


def test_not_a_model_folder_exits_2(tmp_path, capsys):
    code = main(["generate", str(tmp_path), "a fox", "-o", str(tmp_path / "out.png")])
    assert code == 2
    assert "is not an sdrt model folder" in capsys.readouterr().err


def test_written_files_get_ordinary_permissions(tmp_path):
    from sdrt.files import atomic_write

    target = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda f: f.write("x"), binary=False)
    finally:
        os.umask(old)
    assert target.read_text() == "x"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
