"""One small forward pass per component of an adopted folder, fed as a generation feeds it.

The folder is loaded as ``Pipeline.load`` loads any folder (ort-cpu, nothing cached), and
each graph is run through the pipeline's own steps (prompt encoding, the U-Net call, VAE
decode and encode), so that what passes here is what a generation will send: names, dtypes,
shapes, the timestep's form. Outputs must be finite and of the shapes the loop expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.backends.ort_cpu_options import OrtOptions
from sdrt.errors import ModelFolderError, SdrtError
from sdrt.manifest import ForwardCheck, Manifest

PROBE_SEED = 0
PROBE_BATCH = 1  # images; the U-Net sees twice that (classifier-free guidance), LCM once
PROBE_GUIDANCE = 7.5


@dataclass(frozen=True)
class ProbeResult:
    checks: tuple[ForwardCheck, ...]
    notes: tuple[str, ...]
    size: int  # the image side the passes ran at


def probe_size(manifest: Manifest) -> int:
    """The smallest image side the folder serves: cheap, and on the U-Net's size grid."""
    b = manifest.build
    return -(-b.min_size // b.size_multiple) * b.size_multiple


def run_forward_checks(folder: Path, manifest: Manifest) -> ProbeResult:
    """Load ``folder`` (whose sdrt.json is ``manifest``) and run each component once."""
    from sdrt.pipeline import Pipeline

    # Nothing cached: the folder may be a temporary view of the user's files.
    pipe = Pipeline.load(
        folder,
        backend="ort-cpu",
        verify_files="never",
        backend_options=OrtOptions(cache_optimized_model=False),
    )
    size = probe_size(manifest)
    rng = np.random.default_rng(PROBE_SEED)
    checks = [*_text_encoders(pipe), _unet(pipe, size, rng), _vae_decoder(pipe, size, rng)]
    notes = []
    if "vae_encoder" in manifest.components:
        check, reproducible = _vae_encoder(pipe, size, rng)
        checks.append(check)
        if not reproducible:
            notes.append(
                "the vae_encoder gives a random sample of the latent distribution (older "
                "exporters): img2img and inpainting with this folder are not reproducible"
            )
    return ProbeResult(tuple(checks), tuple(notes), size)


def _unet(pipe, size: int, rng) -> ForwardCheck:
    """One guided U-Net call as a generation's first step makes it (the conditioning, the
    plan's first timestep in the graph's form)."""
    manifest = pipe.manifest
    latent = size // manifest.vae_scale_factor
    request = pipe.request(
        "", num_inference_steps=1, guidance_scale=PROBE_GUIDANCE, height=size, width=size,
        seed=PROBE_SEED, output_type="np",
    )  # fmt: skip
    with _named("unet"):
        conditioning = pipe.condition(request)
        _, plan = pipe.plan(request)
        rows = len(conditioning.embeddings)  # 2 * PROBE_BATCH with CFG, PROBE_BATCH for LCM
        sample = rng.standard_normal((rows, manifest.unet_in_channels, latent, latent))
        out = pipe.predict_noise(sample.astype(np.float32), plan.timesteps[0], conditioning)
        inputs = {"sample": sample.shape, "encoder_hidden_states": conditioning.embeddings.shape}
        inputs |= {k: v.shape for k, v in conditioning.added.items()}
        expected = (rows, manifest.latent_channels, latent, latent)
        return _check("unet", inputs, {"out_sample": out}, expected)


def _vae_decoder(pipe, size: int, rng) -> ForwardCheck:
    manifest = pipe.manifest
    latent = size // manifest.vae_scale_factor
    with _named("vae_decoder"):
        latents = rng.standard_normal((PROBE_BATCH, manifest.latent_channels, latent, latent))
        images = pipe.decode(latents.astype(np.float32))  # NaN/Inf raise NumericsError
        expected = (PROBE_BATCH, size, size, 3)  # checks the VAE scale factor too
        return _check("vae_decoder", {"latent_sample": latents.shape}, {"image": images}, expected)


def _vae_encoder(pipe, size: int, rng) -> tuple[ForwardCheck, bool]:
    """(the check, whether two passes on the same image agree)."""
    manifest = pipe.manifest
    latent = size // manifest.vae_scale_factor
    with _named("vae_encoder"):
        pixels = rng.uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        first, second = pipe.encode_image(pixels), pipe.encode_image(pixels)
        expected = (1, manifest.latent_channels, latent, latent)
        check = _check("vae_encoder", {"sample": pixels.shape}, {"latents": first}, expected)
        return check, bool(np.array_equal(first, second))


def _text_encoders(pipe) -> list[ForwardCheck]:
    checks = []
    for encoder in pipe.prompt_encoders:
        name = encoder.session.name
        with _named(name):
            hidden, pooled = encoder.encode_with_pooled([""])
            outputs = {encoder.hidden_output: hidden}
            if pooled is not None:
                outputs[encoder.pooled_output] = pooled
            ids = (1, encoder.tokenizer.max_length)
            checks.append(_check(name, {"input_ids": ids}, outputs, hidden.shape))
    return checks


def _check(name: str, inputs: dict, outputs: dict, first_shape: tuple) -> ForwardCheck:
    """Finite outputs, the first of the expected shape."""
    for output, value in outputs.items():
        if not np.isfinite(value).all():
            raise ModelFolderError(
                f"{name}: the forward pass gave NaN or Inf in {output} (inputs {inputs})"
            )
    first = next(iter(outputs.values()))
    if tuple(first.shape) != tuple(first_shape):
        raise ModelFolderError(
            f"{name}: the forward pass gave {next(iter(outputs))} of shape "
            f"{tuple(first.shape)}; expected {tuple(first_shape)}"
        )
    return ForwardCheck(
        component=name,
        input_shapes={k: tuple(int(d) for d in v) for k, v in inputs.items()},
        output_shapes={k: tuple(int(d) for d in v.shape) for k, v in outputs.items()},
        max_abs_output=max(float(np.abs(v).max()) for v in outputs.values()),
    )


@contextmanager
def _named(name: str) -> Iterator[None]:
    """Re-raise a component's failure as a ModelFolderError that names it."""
    try:
        yield
    except SdrtError as e:
        if isinstance(e, ModelFolderError) and str(e).startswith(f"{name}:"):
            raise
        raise ModelFolderError(f"{name}: the forward pass failed: {e}") from None
