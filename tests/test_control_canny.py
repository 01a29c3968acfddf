"""Canny edge maps (sdrt.control.canny) and ``sdrt control canny``: the edges equal OpenCV's
as diffusers' ControlNet docs make them; bad input exits 2 with one line and writes nothing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from cli_helpers import assert_one_error_line
from PIL import Image, ImageDraw

from sdrt.cli import main
from sdrt.control.canny import canny
from sdrt.errors import ParameterError

cv2 = pytest.importorskip("cv2")
PREFIX = "sdrt control: error: "  # every error line of these tests


def shapes_image() -> Image.Image:
    """A fixed photo stand-in: a colour gradient with shapes on it, and some noise (so that
    the thresholds decide which edges survive)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:96, 0:128]
    pixels = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.float32)
    pixels += rng.normal(0, 12, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 12, 50, 60), fill=(230, 40, 40))
    draw.ellipse((60, 20, 118, 80), fill=(30, 160, 220))
    draw.line((0, 90, 127, 40), fill=(250, 250, 250), width=3)
    return image


def diffusers_docs_canny(image: Image.Image, low, high) -> np.ndarray:
    """The recipe of diffusers' ControlNet guide, verbatim."""
    image = np.array(image)
    image = cv2.Canny(image, low, high)
    image = image[:, :, None]
    return np.concatenate([image, image, image], axis=2)


@pytest.mark.parametrize(("low", "high"), [(100, 200), (50, 120), (150.5, 150.5)])
def test_canny_equals_opencv(low, high):
    image = shapes_image()
    edges = canny(image, low, high)
    assert edges.mode == "RGB" and edges.size == image.size
    expected = diffusers_docs_canny(image, low, high)
    np.testing.assert_array_equal(np.asarray(edges), expected)
    assert 0 < (expected[:, :, 0] == 255).mean() < 0.5  # some edges, not all


def test_canny_converts_to_rgb_first():
    image = shapes_image().convert("RGBA")
    expected = diffusers_docs_canny(image.convert("RGB"), 100, 200)
    np.testing.assert_array_equal(np.asarray(canny(image)), expected)


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [
        (-1, 200, "low_threshold: expected a number >= 0, got -1"),
        (100, float("nan"), "high_threshold: expected a number >= 0, got nan"),
        (True, 200, "low_threshold: expected a number >= 0, got True"),
        (201, 200, "low_threshold: expected at most high_threshold (200), got 201"),
    ],
)
def test_bad_thresholds_are_parameter_errors(low, high, message):
    with pytest.raises(ParameterError) as raised:
        canny(shapes_image(), low, high)
    assert str(raised.value) == message


# ----------------------------------------------------------------------------- the command


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    shapes_image().save(path, quality=95)
    return path


def test_command_writes_the_edge_map(photo, tmp_path, capsys):
    out = tmp_path / "made" / "edges.png"  # the folder is made
    assert main(["control", "canny", str(photo), "-o", str(out), "--low", "50"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(photo) as image:
        expected = diffusers_docs_canny(image.convert("RGB"), 50, 200)
    with Image.open(out) as written:
        np.testing.assert_array_equal(np.asarray(written), expected)
    assert [p.name for p in out.parent.iterdir()] == ["edges.png"]  # no temporary file left


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--low", "300"], "--low: expected at most --high (200), got 300"),
        (["--high", "-5"], "--high: expected a number >= 0, got -5.0"),
        (["--low", "inf"], "--low: expected a number >= 0, got inf"),
    ],
)
def test_bad_thresholds_exit_2(photo, tmp_path, capsys, arguments, expected):
    out = tmp_path / "edges.png"
    assert main(["control", "canny", str(photo), "-o", str(out), *arguments]) == 2
    assert_one_error_line(capsys, PREFIX, expected)
    assert not out.exists()


def test_missing_and_unreadable_images_exit_2(tmp_path, capsys):
    out = tmp_path / "edges.png"
    assert main(["control", "canny", str(tmp_path / "absent.png"), "-o", str(out)]) == 2
    assert_one_error_line(capsys, PREFIX, f"IMAGE: no such file {str(tmp_path / 'absent.png')!r}")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert main(["control", "canny", str(text), "-o", str(out)]) == 2
    assert_one_error_line(capsys, PREFIX, f"IMAGE: cannot read {str(text)!r} as an image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.png"]


def test_output_checks_exit_2(photo, tmp_path, capsys):
    assert main(["control", "canny", str(photo), "-o", str(tmp_path / "edges.gif")]) == 2
    assert_one_error_line(capsys, PREFIX, "-o: expected a file name ending in .png")
    existing = tmp_path / "edges.png"
    existing.write_bytes(b"mine")
    assert main(["control", "canny", str(photo), "-o", str(existing)]) == 2
    assert_one_error_line(capsys, PREFIX, "already exists; pass --force to replace it")
    assert existing.read_bytes() == b"mine"
    assert main(["control", "canny", str(photo), "-o", str(existing), "--force"]) == 0
    assert Image.open(existing).size == shapes_image().size


def test_a_failed_write_leaves_nothing(photo, tmp_path, capsys, monkeypatch):
    def half_written(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_written)
    out = tmp_path / "out" / "edges.png"
    assert main(["control", "canny", str(photo), "-o", str(out)]) == 2
    assert_one_error_line(capsys, PREFIX, "No space left on device")
    assert list(out.parent.iterdir()) == []


def test_missing_opencv_names_the_extra(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    out = tmp_path / "edges.png"
    assert main(["control", "canny", str(photo), "-o", str(out)]) == 2
    assert_one_error_line(
        capsys, PREFIX, "canny edge maps need OpenCV (pip install 'sdrt[control]')"
    )
    assert not out.exists()


def test_a_mistyped_option_prints_canny_s_usage(photo, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["control", "canny", str(photo), "-o", str(tmp_path / "e.png"), "--hihg", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sdrt control canny ")
    assert "sdrt control canny: error: unrecognized arguments: --hihg" in err
