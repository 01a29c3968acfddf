"""ToMe's cost and effect: a plain build against --tome-ratio builds of the same source.

Times one U-Net call (batch 2, as with guidance) of each folder on ort-cpu, interleaved in
one process (A, B, C, A, B, C, ...; medians), and compares each ToMe folder's image with the
plain folder's on the same latents (PSNR and max abs difference; with random weights these
are only a guide). Usage:

    python -m sdrt.benchmarks.studies.tome_cost PLAIN TOME_FOLDER [TOME_FOLDER ...] --size 512 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import sdrt


def _unet_inputs(pipe, size: int, rng) -> dict[str, np.ndarray]:
    m = pipe.manifest
    f = m.vae_scale_factor
    unet = m.components["unet"]
    hidden = next(s for s in unet.inputs if s.name == "encoder_hidden_states")
    return {
        "sample": rng.standard_normal((2, m.latent_channels, size // f, size // f), "float32"),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, hidden.shape[-1]), "float32"),
    }


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="the plain build first, then ToMe builds")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of the image")
    args = parser.parse_args(argv)
    pipes = [sdrt.Pipeline.load(f, backend="ort-cpu") for f in args.folders]
    inputs = _unet_inputs(pipes[0], args.size, np.random.default_rng(0))
    import onnxruntime as ort

    sessions = [
        ort.InferenceSession(f"{f}/unet/model.onnx", providers=["CPUExecutionProvider"])
        for f in args.folders
    ]
    for s in sessions:  # warm-up
        s.run(None, inputs)
    times = [[] for _ in sessions]
    for _ in range(args.repeats):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, inputs)
            times[i].append(time.perf_counter() - t0)
    f = pipes[0].manifest.vae_scale_factor
    latents = np.random.default_rng(1).standard_normal(
        (1, pipes[0].manifest.latent_channels, args.size // f, args.size // f), "float32"
    )
    call = dict(
        prompt="a red fox in the snow",
        num_inference_steps=args.steps,
        height=args.size,
        width=args.size,
        latents=latents,
        output_type="np",
    )
    images = [np.asarray(p(**call).images) for p in pipes]
    plain = statistics.median(times[0])
    for folder, pipe, t, image in zip(args.folders, pipes, times, images, strict=True):
        tome = pipe.manifest.tome
        ratio = tome["ratio"] if tome else 0.0
        print(
            f"{folder}: tome ratio {ratio:g}, size {args.size}, batch 2, U-Net call median "
            f"{statistics.median(t):.3f} s over {args.repeats} ({plain / statistics.median(t):.2f}x "
            f"plain); image vs plain PSNR {_psnr(image, images[0]):.1f} dB, max abs "
            f"{np.abs(image - images[0]).max():.4f}"
        )


if __name__ == "__main__":
    main()
