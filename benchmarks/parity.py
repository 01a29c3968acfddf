"""How far a contender's image is from the reference (torch) image."""

from __future__ import annotations

import math

import numpy as np


def compare_images(image: np.ndarray, reference: np.ndarray) -> dict[str, float | None]:
    """PSNR (dB, images in [0, 1]) and max abs difference; PSNR is None when identical."""
    if image.shape != reference.shape:
        raise ValueError(
            f"parity: image shape {list(image.shape)} differs from the reference's "
            f"{list(reference.shape)}"
        )
    difference = image.astype(np.float64) - reference.astype(np.float64)
    mse = float(np.mean(difference**2))
    return {
        "psnr_db": None if mse == 0 else 10 * math.log10(1.0 / mse),
        "max_abs_diff": float(np.max(np.abs(difference))),
        "identical": mse == 0,
    }
