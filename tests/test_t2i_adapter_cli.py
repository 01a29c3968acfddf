"""``sdrt build --t2i-adapter`` and ``sdrt generate --adapter-image``: the options are
checked before anything heavy runs, ``sdrt info`` shows the adapter, and the adapter
arguments reach the call's request under diffusers' names."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import assert_one_error_line
from conftest import TINY_ADAPTER
from PIL import Image

from sdrt.cli import build_parser, main
from sdrt.commands.generate import config_from_args, prepare
from sdrt.control.adapter_spec import parse_adapter_image
from sdrt.errors import InputError

PREFIX = "sdrt generate: error: --adapter-image: "


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_parse_adapter_image(photo):
    spec = parse_adapter_image(f"canny:{photo}:0.8:0.5")
    assert (spec.image.path, spec.image.detector, spec.image.scale, spec.factor) == (
        photo,
        "canny",
        0.8,
        0.5,
    )
    spec = parse_adapter_image(str(photo))
    assert (spec.image.detector, spec.image.scale, spec.factor) == (None, 1.0, 1.0)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("{photo}:1:1.5", "expected FACTOR in [0, 1]"),
        ("{photo}:x", "with SCALE and FACTOR numbers, got 'x'"),
        ("{photo}:1:0.5:2", "a FILE, then up to two numbers"),
        ("{missing}", "no such file"),
    ],
)
def test_a_bad_adapter_image_exits_2_before_the_folder_is_read(
    photo, tmp_path, capsys, option, expected
):
    option = option.format(photo=photo, missing=tmp_path / "absent.png")
    out = tmp_path / "out.png"
    argv = ["generate", str(tmp_path / "no-folder"), "fox", "--adapter-image", option]
    assert main([*argv, "-o", str(out)]) == 2
    assert_one_error_line(capsys, PREFIX, expected)
    assert not out.exists()


def test_a_folder_without_an_adapter_refuses_it(tiny_built, photo, tmp_path, capsys):
    out = tmp_path / "out.png"
    argv = ["generate", str(tiny_built), "fox", "--adapter-image", str(photo), "-o", str(out)]
    assert main(argv) == 2
    assert_one_error_line(capsys, PREFIX, "has no T2I-Adapter; build one in")
    assert not out.exists()


def test_adapter_arguments_reach_the_request(tiny_built_adapter, photo, tmp_path):
    argv = ["generate", str(tiny_built_adapter), "a fox", "a cat", "-o", str(tmp_path / "o.png")]
    args = build_parser().parse_args([*argv, "--adapter-image", f"{photo}:0.5:0.25"])
    prepared = prepare(config_from_args(args))
    assert len(prepared.requests) == 2
    for request in prepared.requests:
        assert (request.adapter.scale, request.adapter.factor) == (0.5, 0.25)
        np.testing.assert_array_equal(
            np.asarray(request.adapter.image), np.asarray(Image.open(photo))
        )


def test_sdrt_info_shows_the_adapter(tiny_built_adapter, tiny_built, capsys):
    assert main(["info", str(tiny_built_adapter)]) == 0
    out = capsys.readouterr().out
    assert f"t2i adapter    {TINY_ADAPTER}: t2i_adapter from " in out
    assert "full_adapter, 3 input channel(s), 4 features into unet_adapter" in out
    assert main(["info", str(tiny_built)]) == 0
    assert "t2i adapter    none" in capsys.readouterr().out


def test_build_cli_names_the_adapter_by_name_or_base_name(tmp_path):
    from sdrt.export.t2i_adapter_options import T2IAdapterOption

    folder = tmp_path / "sketch-adapter"
    folder.mkdir()
    assert T2IAdapterOption.parse(f"lines={folder}").name == "lines"
    assert T2IAdapterOption.parse(str(folder)).name == "sketch-adapter"
    single = tmp_path / "adapter.safetensors"
    single.write_bytes(b"")
    with pytest.raises(InputError, match="is a single file; expected a diffusers T2IAdapter"):
        T2IAdapterOption.parse(str(single))


def test_build_with_an_adapter_of_another_unet_is_refused(tiny_source, tmp_path):
    from adapter_helpers import make_tiny_t2i_adapter
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.t2i_adapter_options import T2IAdapterOption

    wrong = make_tiny_t2i_adapter(
        tiny_source, tmp_path / "xl", seed=0, adapter_type="full_adapter_xl"
    )
    config = BuildConfig(
        source=str(tiny_source),
        output=tmp_path / "out",
        t2i_adapter=T2IAdapterOption("xl", str(wrong)),
    )
    with pytest.raises(InputError, match="expected adapter_type full_adapter or light_adapter"):
        build(config)
    assert not (tmp_path / "out").exists()
