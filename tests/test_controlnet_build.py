"""``sdrt build --controlnet``: ControlNet graphs and the residual-taking U-Net, verified,
recorded in sdrt.json and shown by ``sdrt info``; what cannot be built is refused first."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TINY_CONTROLNETS

from sdrt.errors import InputError
from sdrt.manifest import (
    CONTROLNET_UNET,
    MID_BLOCK_RESIDUAL,
    controlnet_component,
    read_manifest,
)

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# fp32 graphs against each other or eager PyTorch: float32 rounding only (measured ~2e-6).
MAX_GRAPH_DIFF = 1e-4


def test_sdrt_json_records_each_controlnet_in_build_order(
    tiny_built_controlnet, tiny_controlnet_sources, tiny_built
):
    manifest = read_manifest(tiny_built_controlnet)
    assert tuple(c.name for c in manifest.controlnets) == TINY_CONTROLNETS
    for record in manifest.controlnets:
        assert record.component == controlnet_component(record.name)
        assert record.source.path_or_id == str(tiny_controlnet_sources[record.name].resolve())
        assert record.conditioning_channels == 3
        component = manifest.components[record.component]
        assert component.verification.passed
        outputs = [o.name for o in component.outputs]
        assert outputs[-1] == MID_BLOCK_RESIDUAL
    residual_unet = manifest.components[CONTROLNET_UNET]
    inputs = {s.name for s in residual_unet.inputs}
    assert set(outputs) <= inputs and residual_unet.verification.passed
    # the plain U-Net is the one tiny_built had, untouched
    assert manifest.components["unet"] == read_manifest(tiny_built).components["unet"]


def test_a_record_naming_a_missing_graph_is_a_folder_error(tiny_built_controlnet, tmp_path):
    from sdrt.errors import ModelFolderError

    data = json.loads((tiny_built_controlnet / "sdrt.json").read_text())
    del data["components"][CONTROLNET_UNET]
    (tmp_path / "sdrt.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match="unet_controlnet"):
        read_manifest(tmp_path)


def test_sdrt_info_shows_the_controlnets(tiny_built_controlnet, tiny_built, capsys):
    from sdrt.cli import main

    assert main(["info", str(tiny_built_controlnet)]) == 0
    out = capsys.readouterr().out
    assert "controlnets    2, residuals into unet_controlnet" in out
    for name in TINY_CONTROLNETS:
        assert f"{name}" in out and f"controlnet_{name} from" in out
    assert main(["info", str(tiny_built)]) == 0
    assert "controlnets    none" in capsys.readouterr().out


def test_residual_unet_with_zero_residuals_equals_the_plain_unet(tiny_built_controlnet):
    import sdrt

    pipe = sdrt.Pipeline.load(tiny_built_controlnet)
    plain, residual = pipe.session("unet"), pipe.session(CONTROLNET_UNET)
    rng = np.random.default_rng(0)
    feeds = {
        "sample": rng.standard_normal((2, 4, 10, 8), dtype=np.float32),
        "timestep": np.array([501.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    controlnet = pipe.session(controlnet_component(TINY_CONTROLNETS[0]))
    shapes = controlnet.run(
        feeds
        | {
            "controlnet_cond": np.zeros((2, 3, 80, 64), np.float32),
            "conditioning_scale": np.ones(1, np.float32),
        }
    )
    zeros = {name: np.zeros_like(value) for name, value in shapes.items()}
    expected = plain.run(feeds)["out_sample"]
    got = residual.run(feeds | zeros)["out_sample"]
    assert np.abs(got - expected).max() <= MAX_GRAPH_DIFF
    # and residuals do change it: the inputs are wired in
    moved = residual.run(feeds | shapes)["out_sample"]
    assert np.abs(moved - expected).max() > 100 * MAX_GRAPH_DIFF


def test_controlnet_graph_equals_eager_controlnet(tiny_built_controlnet, tiny_controlnet_sources):
    import sdrt

    name = TINY_CONTROLNETS[1]
    eager = diffusers.ControlNetModel.from_pretrained(tiny_controlnet_sources[name]).eval()
    session = sdrt.Pipeline.load(tiny_built_controlnet).session(controlnet_component(name))
    rng = np.random.default_rng(1)
    sample = rng.standard_normal((1, 4, 8, 12), dtype=np.float32)
    states = rng.standard_normal((1, 77, 32), dtype=np.float32)
    cond = rng.random((1, 3, 64, 96), dtype=np.float32)
    with torch.no_grad():
        down, mid = eager(
            torch.from_numpy(sample),
            torch.tensor(300.0),
            torch.from_numpy(states),
            controlnet_cond=torch.from_numpy(cond),
            conditioning_scale=0.7,
            return_dict=False,
        )
    outputs = session.run(
        {
            "sample": sample,
            "timestep": np.array([300.0], np.float32),
            "encoder_hidden_states": states,
            "controlnet_cond": cond,
            "conditioning_scale": np.array([0.7], np.float32),
        }
    )
    expected = [*down, mid]
    assert len(outputs) == len(expected)
    for got, want in zip(outputs.values(), expected, strict=True):
        assert np.abs(got - want.numpy()).max() <= MAX_GRAPH_DIFF


# ---------------------------------------------------------------------------- refusals


def _config(tiny_source, tmp_path, **options):
    from sdrt.export.build_config import BuildConfig

    return BuildConfig(source=str(tiny_source), output=tmp_path / "out", **options)


def test_cli_names_controlnets_by_name_or_base_name(tmp_path):
    from sdrt.export.controlnet_options import parse_controlnet_options

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    options = parse_controlnet_options(f"canny={tmp_path / 'a'},{tmp_path / 'b'}/")
    assert [(o.name, o.path_or_id) for o in options] == [
        ("canny", str(tmp_path / "a")),
        ("b", f"{tmp_path / 'b'}/"),
    ]
    with pytest.raises(InputError, match=r"expected each name once, got \['a'\]"):
        parse_controlnet_options(f"{tmp_path / 'a'},a={tmp_path / 'b'}")
    with pytest.raises(InputError, match="expected letters, digits"):
        parse_controlnet_options(f"bad name={tmp_path / 'a'}")


def test_a_single_file_controlnet_is_refused_with_the_conversion(tmp_path):
    from sdrt.export.controlnet_options import ControlNetOption

    checkpoint = tmp_path / "control_canny.safetensors"
    checkpoint.write_bytes(b"\0" * 16)
    with pytest.raises(InputError, match="single-file checkpoint; expected a diffusers"):
        ControlNetOption("canny", str(checkpoint))


@pytest.mark.parametrize(
    ("options", "flag"),
    [(dict(precision="int8"), "--precision int8"), (dict(tome="tome"), "--tome-ratio")],
)
def test_controlnet_with_int8_or_tome_is_refused_before_any_export(
    tiny_source, tmp_path, options, flag
):
    from sdrt.export.controlnet_options import ControlNetOption
    from sdrt.export.tome_options import TomeOptions

    if "tome" in options:
        options = {"tome": TomeOptions(ratio=0.5)}
    (tmp_path / "cn").mkdir()
    with pytest.raises(InputError, match=f"expected a build without {flag}"):
        _config(
            tiny_source,
            tmp_path,
            controlnets=(ControlNetOption("cn", str(tmp_path / "cn")),),
            **options,
        )


def test_a_controlnet_of_another_unet_is_refused_before_any_export(
    tiny_source, tiny_controlnet_sources, tmp_path
):
    from sdrt.export.build import build
    from sdrt.export.controlnet_options import ControlNetOption

    other = tmp_path / "other"
    shutil.copytree(tiny_controlnet_sources[TINY_CONTROLNETS[0]], other)
    config = json.loads((other / "config.json").read_text())
    config["cross_attention_dim"] = 64
    (other / "config.json").write_text(json.dumps(config))
    options = _config(tiny_source, tmp_path, controlnets=(ControlNetOption("x", str(other)),))
    with pytest.raises(InputError, match="expected cross_attention_dim 32 .* got 64"):
        build(options)
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_controlnet_is_refused(tiny_source, tmp_path):
    from sdrt.export.build import build
    from sdrt.export.controlnet_options import ControlNetOption

    options = _config(
        tiny_source,
        tmp_path,
        controlnets=(ControlNetOption("vae", str(tiny_source / "vae")),),
    )
    with pytest.raises(InputError, match="expected a ControlNetModel config, got 'AutoencoderKL'"):
        build(options)


def test_build_cli_refuses_a_single_file_controlnet_with_one_line(tiny_source, tmp_path, capsys):
    from sdrt import cli

    checkpoint = tmp_path / "control_canny.safetensors"
    checkpoint.write_bytes(b"\0" * 16)
    out = tmp_path / "out"
    code = cli.main(
        ["build", str(tiny_source), "-o", str(out), "--controlnet", f"canny={checkpoint}"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "single-file checkpoint" in err and "from_single_file" in err
    assert not out.exists()


def test_build_cli_joins_repeated_controlnet_options(tiny_source, tmp_path, capsys):
    """Names are checked across every --controlnet given: a repeat is one line, exit 2."""
    from sdrt import cli

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    out = tmp_path / "out"
    arguments = ["--controlnet", f"x={tmp_path / 'a'},{tmp_path / 'b'}", "--controlnet"]
    code = cli.main(["build", str(tiny_source), "-o", str(out), *arguments, f"b={tmp_path / 'a'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "expected each name once, got ['b']" in err


def test_tensorrt_profiles_cover_the_controlnet_graphs_shapes(tiny_built_controlnet):
    """The engine profiles (engines/profiles.py) of the ControlNet and residual U-Net graphs
    hold the shapes the graphs really take and give at the folder's smallest and largest
    size (checked on ONNX Runtime; TensorRT itself not run here)."""
    from sdrt.engines.profiles import component_profile, shape_range_from_options

    import sdrt

    pipe = sdrt.Pipeline.load(tiny_built_controlnet)
    manifest = pipe.manifest
    shapes = shape_range_from_options(manifest)
    name = controlnet_component(TINY_CONTROLNETS[0])
    profiles = {
        n: component_profile(manifest.components[n], shapes, manifest.vae_scale_factor)
        for n in (name, CONTROLNET_UNET)
    }
    rng = np.random.default_rng(0)
    for level in ("min", "max"):
        inputs = {
            k: rng.standard_normal(v[level], dtype=np.float32) for k, v in profiles[name].items()
        }
        outputs = pipe.session(name).run(inputs)
        residual_profile = profiles[CONTROLNET_UNET]
        for key, value in outputs.items():
            assert value.shape == residual_profile[key][level], (key, level)
        assert set(outputs) | {"sample", "timestep", "encoder_hidden_states"} == set(
            residual_profile
        )


def test_tensorrt_engines_of_the_controlnet_graphs_are_built_and_recorded(
    tiny_built_controlnet, tmp_path
):
    """With the test fakes of TensorRT's builder and verifier (tests/test_engines_build.py):
    not run on a GPU."""
    from sdrt.engines.profiles import ShapeRange
    from test_engines_build import build as build_engines_with_fakes

    folder = tmp_path / "folder"
    shutil.copytree(tiny_built_controlnet, folder)
    wanted = (controlnet_component(TINY_CONTROLNETS[1]), CONTROLNET_UNET)
    report = build_engines_with_fakes(
        folder, shapes=ShapeRange(64, 64, 64, 64, 128, 128, 1, 1, 2), components=wanted
    )
    engines = read_manifest(folder).engines
    assert engines == report.manifest.engines
    assert sorted(e.component for e in engines) == sorted(wanted)
    residual = next(e for e in engines if e.component == CONTROLNET_UNET)
    assert residual.profile[MID_BLOCK_RESIDUAL]["max"] == (4, 64, 2, 2)  # 128 px / 8 / 2**3
