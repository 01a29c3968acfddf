"""``sdrt generate --control``: the option is parsed and checked before the model loads, a
folder without ControlNets refuses it, and the control arguments reach the call's request
under diffusers' names (the images made end to end are tested with the ControlNet build)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import assert_one_error_line
from PIL import Image

import sdrt.manifest
import sdrt.request
from sdrt.cli import build_parser, main
from sdrt.commands.generate import config_from_args, prepare
from sdrt.errors import InputError

CONTROL_ARGUMENTS = (
    "control_image",
    "controlnet_conditioning_scale",
    "control_guidance_start",
    "control_guidance_end",
)
PREFIX = "sdrt generate: error: --control: "  # every error line of these tests


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize(
    ("control", "expected"),
    [
        ("{photo}:1:0.7:0.2", "expected 0 <= START < END <= 1"),
        ("{photo}:x", "with SCALE, START and END numbers, got 'x'"),
        ("{missing}", "no such file"),
        ("depth:{photo}", "'depth' is not a detector"),
    ],
)
def test_a_bad_control_exits_2_before_the_folder_is_read(
    photo, tmp_path, capsys, control, expected
):
    control = control.format(photo=photo, missing=tmp_path / "absent.png")
    out = tmp_path / "out.png"
    # the folder does not exist: --control is checked with the other options, first
    code = main(
        ["generate", str(tmp_path / "no-folder"), "fox", "--control", control, "-o", str(out)]
    )
    assert code == 2
    assert_one_error_line(capsys, PREFIX, expected)
    assert not out.exists()


def test_a_folder_without_controlnets_refuses_control(
    tiny_built, photo, tmp_path, capsys, monkeypatch
):
    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before --control was checked")

    monkeypatch.setattr("sdrt.Pipeline.load", load)
    out = tmp_path / "out.png"
    code = main(["generate", str(tiny_built), "fox", "--control", str(photo), "-o", str(out)])
    assert code == 2
    assert_one_error_line(
        capsys, PREFIX, f"the model folder {str(tiny_built)!r} has no ControlNet; build one"
    )
    assert not out.exists()


class _WithControlNets:
    """A folder's manifest as if it recorded ControlNets of these names (their records and
    graphs come with the ControlNet build)."""

    def __init__(self, manifest, names):
        self.manifest = manifest
        self.controlnets = tuple(SimpleNamespace(name=name) for name in names)

    def __getattr__(self, name):
        return getattr(self.manifest, name)


@pytest.fixture
def requested(tiny_built, monkeypatch):
    """Run generate's checks on ``tiny_built`` as if it held ControlNets ``canny`` and
    ``depth``; the control arguments each request was made with."""
    read_manifest, make_request = sdrt.manifest.read_manifest, sdrt.request.make_request
    made = []

    def make(manifest, **arguments):
        made.append({name: arguments.pop(name) for name in CONTROL_ARGUMENTS if name in arguments})
        return make_request(manifest.manifest, **arguments)

    monkeypatch.setattr(
        sdrt.manifest,
        "read_manifest",
        lambda f: _WithControlNets(read_manifest(f), ["canny", "depth"]),
    )
    monkeypatch.setattr(sdrt.request, "make_request", make)

    def run(*argv):
        made.clear()
        args = build_parser().parse_args(["generate", str(tiny_built), *argv])
        prepare(config_from_args(args))
        return made

    return run


def test_control_arguments_reach_the_request(requested, photo, tmp_path):
    cv2 = pytest.importorskip("cv2")
    depth = tmp_path / "depth.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(depth)
    made = requested(
        "a fox",
        "a cat",
        "--control",
        f"canny:{photo}:0.5:0.1:0.9",
        "--control",
        str(depth),
        "-o",
        str(tmp_path / "out.png"),
    )
    assert len(made) == 2  # one request per prompt, each with the same controls
    for arguments in made:
        assert arguments["controlnet_conditioning_scale"] == [0.5, 1.0]
        assert arguments["control_guidance_start"] == [0.1, 0.0]
        assert arguments["control_guidance_end"] == [0.9, 1.0]
        edges, plain = arguments["control_image"]
        expected = cv2.Canny(np.asarray(Image.open(photo).convert("RGB")), 100, 200)
        np.testing.assert_array_equal(np.asarray(edges)[:, :, 1], expected)
        np.testing.assert_array_equal(np.asarray(plain), np.asarray(Image.open(depth)))


def test_one_control_per_controlnet(requested, photo, tmp_path):
    with pytest.raises(
        InputError, match=r"expected one per ControlNet of the folder \(2: canny, depth\), got 1"
    ):
        requested("a fox", "--control", str(photo), "-o", str(tmp_path / "out.png"))


def test_no_control_adds_no_arguments(requested, tmp_path):
    assert requested("a fox", "-o", str(tmp_path / "out.png")) == [{}]
