"""Output shapes known before running (CUDA graphs preallocate them), from symbolic dims."""

from __future__ import annotations

import pytest

from sdrt.backends.shapes import evaluate_dim, resolve_output_shapes
from sdrt.errors import InputError
from sdrt.manifest import TensorSpec


def test_evaluate_dim_handles_shape_inference_expressions():
    sizes = {"latent_height": 32, "image_height": 256, "batch": 2}
    assert evaluate_dim("batch", sizes) == 2
    assert evaluate_dim("floor(2.0*floor(2.0*floor(2.0*latent_height)))", sizes) == 256
    assert evaluate_dim("floor(floor(floor(image_height/2)/2)/2)", sizes) == 32
    assert evaluate_dim("floor(1.0*floor(1.0*floor(1.0*batch)))", sizes) == 2
    assert evaluate_dim("ceil(image_height/3)", sizes) == 86
    assert evaluate_dim("unk_12", sizes) is None
    assert evaluate_dim("__import__('os').system('true')", sizes) is None
    assert evaluate_dim("image_height/3", sizes) is None  # not a whole number


def test_resolve_output_shapes_of_the_exported_vae_and_unet():
    vae_in = (
        TensorSpec("latent_sample", "float32", ("batch", 4, "latent_height", "latent_width")),
    )
    vae_out = (
        TensorSpec(
            "sample",
            "float32",
            (
                "floor(1.0*floor(1.0*floor(1.0*batch)))",
                3,
                "floor(2.0*floor(2.0*floor(2.0*latent_height)))",
                "floor(2.0*floor(2.0*floor(2.0*latent_width)))",
            ),
        ),
    )
    shapes = resolve_output_shapes(vae_in, vae_out, {"latent_sample": (1, 4, 16, 24)})
    assert shapes == {"sample": (1, 3, 128, 192)}
    unet_in = (
        TensorSpec("sample", "float32", ("steps", 4, "h", "w")),
        TensorSpec("timestep", "float32", ("steps",)),
    )
    unet_out = (TensorSpec("out_sample", "float32", ("steps", 4, "h", "w")),)
    shapes = resolve_output_shapes(unet_in, unet_out, {"sample": (2, 4, 8, 8), "timestep": (1,)})
    assert shapes == {"out_sample": (2, 4, 8, 8)}


def test_unknown_output_dimension_is_a_clear_error():
    with pytest.raises(
        InputError, match=r"output 'y' has dimensions \['unk_3'\].*without cuda_graph"
    ):
        resolve_output_shapes(
            (TensorSpec("x", "float32", ("batch",)),),
            (TensorSpec("y", "float32", ("unk_3",)),),
            {"x": (2,)},
        )
