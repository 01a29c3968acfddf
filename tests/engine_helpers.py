"""A small model folder for the engine tests: real manifest, placeholder or tiny ONNX graphs."""

from __future__ import annotations

from pathlib import Path

from sdrt.manifest import (
    BuildOptions,
    Component,
    Manifest,
    Source,
    TensorSpec,
    sha256_file,
    write_manifest,
)

# Optimum's names with symbolic axes, as `sdrt build` writes them.
SPECS = {
    "text_encoder": (
        (TensorSpec("input_ids", "int32", ("batch", "sequence")),),
        (
            TensorSpec("last_hidden_state", "float32", ("batch", "sequence", 32)),
            TensorSpec("pooler_output", "float32", ("batch", 32)),
        ),
    ),
    "unet": (
        (
            TensorSpec("sample", "float32", ("batch", 4, "height", "width")),
            TensorSpec("timestep", "float32", ("steps",)),
            TensorSpec("encoder_hidden_states", "float32", ("batch", "sequence", 32)),
        ),
        (TensorSpec("out_sample", "float32", ("batch", 4, "height", "width")),),
    ),
    "vae_decoder": (
        (TensorSpec("latent_sample", "float32", ("batch", 4, "height", "width")),),
        (TensorSpec("sample", "float32", ("batch", 3, "image_height", "image_width")),),
    ),
}


def make_folder(folder: Path, contents: dict[str, bytes] | None = None) -> Manifest:
    """Write component files (placeholder bytes unless given) and a manifest naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    components = {}
    for name, (inputs, outputs) in SPECS.items():
        path = folder / name / "model.onnx"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes((contents or {}).get(name, f"graph of {name}".encode()))
        components[name] = Component(
            name=name,
            file=f"{name}/model.onnx",
            sha256=sha256_file(path),
            precision="fp32",
            opset=17,
            inputs=inputs,
            outputs=outputs,
        )
    manifest = Manifest(
        source=Source("tiny", None, "0" * 64),
        family="sd1",
        prediction_type="epsilon",
        vae_scaling_factor=0.18215,
        latent_channels=4,
        unet_in_channels=4,
        sample_size=32,
        vae_scale_factor=8,
        build=BuildOptions(
            min_size=128,
            max_size=512,
            opt_size=256,
            min_batch=1,
            max_batch=4,
            opt_batch=1,
            precision="fp32",
            vae_precision="fp32",
            opset=17,
        ),
        components=components,
        tokenizers=("tokenizer",),
        versions={"sdrt": "test"},
    )
    write_manifest(folder, manifest)
    return manifest
