"""Shared setup of the tests that compare sdrt's images with diffusers' (the oracle) on the
same weights: the same initial latents, the same between-step noise on both sides, the
difference measured, the U-Net's calls recorded.

Randomness is made the same on both sides by passing sdrt's draws to diffusers: the initial
noise as ``latents``, and where diffusers draws noise itself (ancestral steps, LCM's and
TCD's steps) its ``randn_tensor`` is patched, test-scoped, to return sdrt's draws in order.
"""

from __future__ import annotations

import numpy as np


def initial_latents(pipe, batch: int, height: int, width: int, seed: int) -> np.ndarray:
    """Standard normal latents of the shape ``pipe`` (an sdrt.Pipeline) denoises."""
    f = pipe.manifest.vae_scale_factor
    shape = (batch, pipe.manifest.latent_channels, height // f, width // f)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def step_noises(seed: int, shape, count: int) -> list[np.ndarray]:
    """sdrt's between-step draws when latents are given: one array per step from ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)]


def inject_noise(monkeypatch, module, noises: list[np.ndarray]) -> None:
    """Make ``module.randn_tensor`` return ``noises`` in order (and fail if it runs out)."""
    import torch

    queue = list(noises)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        noise = queue.pop(0)
        assert tuple(shape) == noise.shape, (shape, noise.shape)
        return torch.from_numpy(noise.copy()).to(dtype=dtype or torch.float32)

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)


def max_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The largest absolute difference of sdrt's float32 images from diffusers'."""
    assert ours.shape == theirs.shape
    assert ours.dtype == np.float32
    return float(np.abs(ours - theirs).max())


class BatchRecorder:
    """A U-Net session that records each call's batch and feed names, and runs the real one."""

    def __init__(self, session):
        self.session = session
        self.calls: list[tuple[int, tuple[str, ...]]] = []

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, feeds):
        self.calls.append((feeds["sample"].shape[0], tuple(sorted(feeds))))
        return self.session.run(feeds)
