"""``--control [canny:]FILE[:SCALE[:START:END]]``: parsing, its errors, and the Pipeline
call's keyword arguments (sdrt.control.spec)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdrt.control.spec import ControlSpec, call_arguments, control_images, parse_control
from sdrt.errors import InputError


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A working folder with photo.png and edges/depth.png in it."""
    monkeypatch.chdir(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save("photo.png")
    Path("edges").mkdir()
    Image.new("RGB", (48, 32)).save("edges/depth.png")
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("photo.png", ControlSpec(Path("photo.png"))),
        ("photo.png:0.5", ControlSpec(Path("photo.png"), scale=0.5)),
        ("edges/depth.png:0.8:0.1:0.6", ControlSpec(Path("edges/depth.png"), None, 0.8, 0.1, 0.6)),
        ("canny:photo.png", ControlSpec(Path("photo.png"), "canny")),
        ("canny:photo.png:1.5:0:0.5", ControlSpec(Path("photo.png"), "canny", 1.5, 0.0, 0.5)),
        ("photo.png:0", ControlSpec(Path("photo.png"), scale=0.0)),
    ],
)
def test_parse_control(here, text, expected):
    assert parse_control(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected [canny:]FILE[:SCALE[:START:END]] with a FILE, got ''"),
        ("canny:", "with a FILE, got 'canny:'"),
        (":0.5", "with a FILE, got ':0.5'"),
        ("photo.png:0.5:0.2", "got START without END in 'photo.png:0.5:0.2'"),
        ("photo.png:1:0:1:0.5", "got 4 numbers in 'photo.png:1:0:1:0.5'"),
        ("photo.png:strong", "numbers, got 'strong' in 'photo.png:strong'"),
        ("photo.png:nan", "expected finite numbers, got 'nan' in 'photo.png:nan'"),
        (
            "photo.png:1:0.6:0.4",
            "expected 0 <= START < END <= 1 (fractions of the steps), got START 0.6 and END 0.4",
        ),
        ("photo.png:1:0.5:0.5", "got START 0.5 and END 0.5"),
        ("photo.png:1:-0.1:0.5", "got START -0.1 and END 0.5"),
        ("photo.png:1:0:1.5", "got START 0 and END 1.5"),
        ("absent.png", "no such file 'absent.png' (from 'absent.png')"),
        ("canny:absent.png:0.5", "no such file 'absent.png' (from 'canny:absent.png:0.5')"),
        ("depth:photo.png", "'depth' is not a detector: sdrt makes canny"),
        (
            "C:\\pictures\\photo.png",
            "(drive letters, and other file names with ':', are not supported)",
        ),
        ("2024-01:photo.png", " (file names with ':' are not supported)"),
    ],
)
def test_bad_control_is_one_clear_error(here, text, message):
    with pytest.raises(InputError) as raised:
        parse_control(text)
    assert str(raised.value).startswith("--control: ")
    assert message in str(raised.value)


@pytest.mark.parametrize("name", ["photo.png:0.5", "canny:photo.png", "a:b.png"])
def test_a_file_name_with_a_colon_is_refused_not_misread(here, name):
    # "photo.png:0.5" would otherwise read as photo.png at scale 0.5, another file
    Image.new("RGB", (8, 8)).save(name, format="PNG")
    with pytest.raises(InputError, match="names a file, but ':' separates the fields"):
        parse_control(name)


def test_call_arguments_are_lists_in_order(here):
    controls = [parse_control("photo.png:0.5:0:0.5"), parse_control("edges/depth.png")]
    first, second = Image.new("RGB", (8, 8)), Image.new("RGB", (8, 8), "white")
    assert call_arguments(controls, [first, second]) == {
        "control_image": [first, second],
        "controlnet_conditioning_scale": [0.5, 1.0],
        "control_guidance_start": [0.0, 0.0],
        "control_guidance_end": [0.5, 1.0],
    }
    with pytest.raises(InputError, match=r"expected one image per control \(2\), got 1"):
        call_arguments(controls, [first])


def test_control_images_read_each_and_make_canny_edges(here):
    from sdrt.control.canny import canny

    pytest.importorskip("cv2")
    read = []

    def reader(path):
        read.append(path)
        return Image.open(path).convert("RGB")

    controls = [parse_control("edges/depth.png"), parse_control("canny:photo.png:0.7")]
    depth, edges = control_images(controls, reader)
    assert read == [Path("edges/depth.png"), Path("photo.png")]
    np.testing.assert_array_equal(np.asarray(depth), np.asarray(reader("edges/depth.png")))
    expected = canny(Image.open("photo.png"))
    np.testing.assert_array_equal(np.asarray(edges), np.asarray(expected))
    assert not np.array_equal(np.asarray(edges), np.asarray(Image.open("photo.png")))
