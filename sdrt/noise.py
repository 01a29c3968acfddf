"""Where a call's random noise comes from.

A plain call draws from one numpy Generator (its ``seed``), in this order: the initial
noise of the latents' shape (unless ``latents`` are given), then, for schedulers that
need it, one array of the latents' shape per U-Net call. ``SeedNoise`` is that stream.

Anything with the same two methods can stand in for it (``Pipeline.generate(request,
noise=...)``): sdrt.interpolation uses that to give every frame of a walk the noise of
its keyframes' streams interpolated, so that a keyframe's frame is exactly a plain call.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class NoiseSource(Protocol):
    """The noise one call draws, in the order it draws it."""

    def initial(self, shape: tuple[int, ...]) -> np.ndarray:
        """The initial noise (drawn only when the call has no ``latents``)."""
        ...

    def step(self, shape: tuple[int, ...]) -> np.ndarray:
        """One U-Net call's scheduler noise (drawn only by schedulers that need it)."""
        ...


class SeedNoise:
    """A plain call's noise: float32 standard normal draws from one numpy Generator."""

    def __init__(self, seed: int | np.random.Generator | None):
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    def initial(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.standard_normal(shape, dtype=np.float32)

    def step(self, shape: tuple[int, ...]) -> np.ndarray:
        return self._rng.standard_normal(shape, dtype=np.float32)
