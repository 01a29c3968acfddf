"""The build's token-merging settings (no torch: the CLI and BuildConfig take them)."""

from __future__ import annotations

from dataclasses import dataclass

from sdrt.errors import InputError

MAX_RATIO = 0.75  # 1 - 1/(sx*sy) for tomesd's default 2x2 cells
DOWNSAMPLES = (1, 2, 4, 8)


@dataclass(frozen=True)
class TomeOptions:
    """ToMe settings of a build (tomesd's apply_patch arguments, deterministic)."""

    ratio: float
    max_downsample: int = 1
    sx: int = 2
    sy: int = 2

    def __post_init__(self):
        if not 0.0 < self.ratio <= MAX_RATIO:
            raise InputError(f"--tome-ratio must be in (0, {MAX_RATIO}], got {self.ratio}")
        if self.max_downsample not in DOWNSAMPLES:
            raise InputError(
                f"--tome-max-downsample must be one of {DOWNSAMPLES}, got {self.max_downsample}"
            )

    def tomesd_arguments(self) -> dict:
        return {
            "ratio": self.ratio,
            "max_downsample": self.max_downsample,
            "sx": self.sx,
            "sy": self.sy,
        }

    def as_record(self) -> dict:
        """What sdrt.json records (tomesd's argument names)."""
        return {
            "ratio": self.ratio,
            "max_downsample": self.max_downsample,
            "sx": self.sx,
            "sy": self.sy,
            "use_rand": False,
            "merge_attn": True,
            "merge_crossattn": False,
            "merge_mlp": False,
            "reference": "tomesd 0.1.3",
        }
