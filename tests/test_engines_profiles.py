"""Optimization profiles and cache keys: pure Python, no GPU."""

from __future__ import annotations

import dataclasses

import pytest
from engine_helpers import make_folder
from sdrt.engines.profiles import (
    ShapeRange,
    component_profile,
    profile_contains,
    shape_range_from_options,
)

from sdrt.backends.engine_key import BuildEnvironment, engine_cache_key
from sdrt.backends.shapes import broadcast_named_dims
from sdrt.errors import InputError, ModelFolderError
from sdrt.manifest import TensorSpec

ENV = BuildEnvironment("tensorrt", "10.3.0", "8.9", "NVIDIA L4")


@pytest.fixture
def manifest(tmp_path):
    return make_folder(tmp_path / "model")


def test_dynamic_profile_follows_sizes_batch_and_guidance(manifest):
    shapes = shape_range_from_options(manifest, min_size=256, max_size=512, max_batch=2)
    unet = component_profile(manifest.components["unet"], shapes, manifest.vae_scale_factor)
    # Latents are 1/8 of the image; guidance doubles the U-Net batch except at its minimum,
    # which keeps the unguided batch (guidance_scale <= 1) inside the profile.
    assert unet["sample"] == {"min": (1, 4, 32, 32), "opt": (2, 4, 32, 32), "max": (4, 4, 64, 64)}
    assert unet["timestep"] == {"min": (1,), "opt": (1,), "max": (1,)}
    assert unet["encoder_hidden_states"]["max"] == (4, 77, 32)
    text = component_profile(manifest.components["text_encoder"], shapes, 8)
    assert text["input_ids"] == {"min": (1, 77), "opt": (2, 77), "max": (4, 77)}
    vae = component_profile(manifest.components["vae_decoder"], shapes, 8)
    assert vae["latent_sample"] == {
        "min": (1, 4, 32, 32),
        "opt": (1, 4, 32, 32),
        "max": (2, 4, 64, 64),
    }


def test_static_profile_fixes_every_dimension(manifest):
    shapes = shape_range_from_options(manifest, static=(384, 256), batch=2)
    assert shapes.is_static
    unet = component_profile(manifest.components["unet"], shapes, 8)
    # (width, height) = (384, 256): latents are 32 high and 48 wide; guided batch 2 * 2.
    assert set(unet["sample"].values()) == {(4, 4, 32, 48)}
    vae = component_profile(manifest.components["vae_decoder"], shapes, 8)
    assert set(vae["latent_sample"].values()) == {(2, 4, 32, 48)}


def test_without_guidance_the_unet_batch_is_not_doubled(manifest):
    shapes = shape_range_from_options(manifest, static=(256, 256), guidance=False)
    unet = component_profile(manifest.components["unet"], shapes, 8)
    assert unet["sample"]["max"] == (1, 4, 32, 32)


def test_defaults_come_from_the_folder_build(manifest):
    shapes = shape_range_from_options(manifest)
    assert (shapes.min_height, shapes.opt_width, shapes.max_height) == (128, 256, 512)
    assert (shapes.min_batch, shapes.max_batch) == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_size": 100}, "min height must be a positive multiple of 8, got 100"),
        ({"max_size": 1024}, "max height 1024 is outside the model folder's size range 128..512"),
        ({"min_size": 512, "max_size": 256}, "height: expected min <= opt <= max"),
        ({"static": (256, 256), "max_size": 512}, "a static shape fixes every dimension"),
        ({"max_batch": 0}, "batch must be at least 1"),
    ],
)
def test_bad_shape_options_are_refused(manifest, kwargs, message):
    with pytest.raises(InputError, match=message):
        shape_range_from_options(manifest, **kwargs)


def test_size_multiple_of_the_folder_is_enforced(manifest):
    manifest = dataclasses.replace(
        manifest, build=dataclasses.replace(manifest.build, size_multiple=64)
    )
    with pytest.raises(InputError, match="multiple of 64, got 200"):
        shape_range_from_options(manifest, static=(200, 256))


def test_unknown_symbolic_input_is_an_error(manifest):
    unet = manifest.components["unet"]
    odd = dataclasses.replace(
        unet, inputs=(*unet.inputs, TensorSpec("controlnet_residual", "float32", ("batch", 4)))
    )
    with pytest.raises(ModelFolderError, match="'controlnet_residual' has symbolic shape"):
        component_profile(odd, ShapeRange.static(256, 256), 8)


def test_symbolic_channel_dimension_is_an_error(manifest):
    unet = manifest.components["unet"]
    bad = dataclasses.replace(
        unet,
        inputs=(TensorSpec("sample", "float32", ("batch", "channels", "height", "width")),),
    )
    with pytest.raises(ModelFolderError, match="expected a fixed channel size"):
        component_profile(bad, ShapeRange.static(256, 256), 8)


def test_profile_contains_names_the_offending_input(manifest):
    shapes = shape_range_from_options(manifest, min_size=256, max_size=512)
    profile = component_profile(manifest.components["vae_decoder"], shapes, 8)
    assert profile_contains(profile, {"latent_sample": (1, 4, 40, 64)}) is None
    message = profile_contains(profile, {"latent_sample": (1, 4, 80, 64)})
    assert "'latent_sample' has shape [1, 4, 80, 64]" in message
    assert "[1, 4, 32, 32] .. [4, 4, 64, 64]" in message


# ---------------------------------------------------------------------------- cache keys


def _options(profile, **changes):
    options = {"precision": "fp16", "refit": False, "optimization_level": 3, "profile": profile}
    return options | changes


def test_cache_key_covers_graph_options_version_and_architecture(manifest):
    unet = manifest.components["unet"]
    profile = component_profile(unet, ShapeRange.static(256, 256), 8)
    key = engine_cache_key(unet, _options(profile), ENV)
    assert len(key) == 16 and int(key, 16) >= 0
    assert engine_cache_key(unet, _options(profile), ENV) == key  # deterministic
    changed = [
        engine_cache_key(dataclasses.replace(unet, sha256="f" * 64), _options(profile), ENV),
        engine_cache_key(
            dataclasses.replace(
                unet, external_data="unet/model.onnx_data", external_data_sha256="1"
            ),
            _options(profile),
            ENV,
        ),
        engine_cache_key(unet, _options(profile, refit=True), ENV),
        engine_cache_key(unet, _options(profile, precision="fp32"), ENV),
        engine_cache_key(
            unet, _options(component_profile(unet, ShapeRange.static(256, 384), 8)), ENV
        ),
        engine_cache_key(
            unet, _options(profile), dataclasses.replace(ENV, library_version="10.4.0")
        ),
        engine_cache_key(
            unet, _options(profile), dataclasses.replace(ENV, compute_capability="9.0")
        ),
    ]
    assert key not in changed and len(set(changed)) == len(changed)
    # The device name is informational: same architecture, same engine.
    assert (
        engine_cache_key(unet, _options(profile), dataclasses.replace(ENV, device_name="x")) == key
    )


def test_cache_key_is_the_same_after_a_json_round_trip(manifest):
    unet = manifest.components["unet"]
    profile = component_profile(unet, ShapeRange.static(256, 256), 8)
    as_lists = {n: {k: list(v) for k, v in levels.items()} for n, levels in profile.items()}
    assert engine_cache_key(unet, _options(profile), ENV) == engine_cache_key(
        unet, _options(as_lists), ENV
    )


def test_cache_key_refuses_non_json_options(manifest):
    with pytest.raises(TypeError, match="JSON data"):
        engine_cache_key(manifest.components["unet"], {"path": object()}, ENV)


# ---------------------------------------------------------------------------- shared dimension names


def _unet_naming_timestep_like_the_batch(manifest):
    # As `sdrt build` exports it: the timestep's axis has the batch axis's name.
    unet = manifest.components["unet"]
    return dataclasses.replace(
        unet,
        inputs=(
            TensorSpec("sample", "float32", ("steps", 4, "latent_height", "latent_width")),
            TensorSpec("timestep", "float32", ("steps",)),
            TensorSpec("encoder_hidden_states", "float32", ("steps", "sequence", 32)),
        ),
    )


def test_a_timestep_named_like_the_batch_follows_the_batch(manifest):
    unet = _unet_naming_timestep_like_the_batch(manifest)
    shapes = shape_range_from_options(manifest, min_size=256, max_size=512, max_batch=2)
    profile = component_profile(unet, shapes, 8)
    # TensorRT requires equally named dimensions to agree, so the timestep range is the
    # sample's batch range, not (1,).
    assert profile["timestep"] == {"min": (1,), "opt": (2,), "max": (4,)}
    assert profile["sample"]["max"][0] == 4


def test_broadcast_named_dims_widens_one_value_inputs(manifest):
    unet = _unet_naming_timestep_like_the_batch(manifest)
    fed = {"sample": (2, 4, 32, 32), "timestep": (1,), "encoder_hidden_states": (2, 77, 32)}
    assert broadcast_named_dims(unet.inputs, fed) == fed | {"timestep": (2,)}
    # Differently named axes are left alone.
    plain = manifest.components["unet"]
    assert broadcast_named_dims(plain.inputs, fed) == fed


def test_profiles_of_the_exported_tiny_folder_run_through_its_graphs(tiny_built):
    # The axis roles hold for what `sdrt build` really writes: every profile corner is a
    # shape the ONNX graphs accept (and the verification cases are drawn from them).
    import onnxruntime as ort
    from sdrt.engines.compare import sample_inputs

    from sdrt.manifest import read_manifest

    manifest = read_manifest(tiny_built)
    shapes = shape_range_from_options(manifest, min_size=64, max_size=128, max_batch=2)
    for name, component in manifest.components.items():
        profile = component_profile(component, shapes, manifest.vae_scale_factor)
        session = ort.InferenceSession(
            str(tiny_built / component.file), providers=["CPUExecutionProvider"]
        )
        for level in ("min", "max"):
            corner = {n: levels[level] for n, levels in profile.items()}
            outputs = session.run(None, sample_inputs(component.inputs, corner, seed=0))
            assert outputs[0].shape[0] == corner[component.inputs[0].name][0], name
