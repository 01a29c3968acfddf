"""The fp16 VAE's NaN guard: rerun in fp32 when fp16 overflows.

SD VAE decoders have activations beyond fp16's range (65504) for some latents (always, for
SDXL's original VAE), which come out as NaN or Inf. The GPU backends run the VAE in fp16
and wrap it here: after each call the outputs are checked for non-finite values (one
reduction on the device and one boolean to the host), and on overflow the same inputs go
through an fp32 session, made on first need. The guard then stays on fp32 (``sticky``):
a VAE that overflowed once will overflow again, and running it twice per image would cost
more than fp32 alone. Without a fallback the outputs pass through unchanged and the
pipeline reports the NaN (NumericsError).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sdrt.arrays import namespace_of
from sdrt.backends.protocol import Session

logger = logging.getLogger(__name__)


def all_finite(outputs: Mapping[str, Any]) -> bool:
    for value in outputs.values():
        xp = namespace_of(value)
        if not bool(xp.isfinite(value).all()):
            return False
    return True


class NanGuardedSession:
    """A Session that falls back from ``primary`` to an fp32 session on NaN/Inf outputs."""

    def __init__(
        self,
        primary: Session,
        make_fallback: Callable[[], Session] | None,
        *,
        sticky: bool = True,
    ):
        self.name = primary.name
        self.inputs = primary.inputs
        self.outputs = primary.outputs
        self.sticky = sticky
        self.fallbacks = 0  # calls that were rerun in fp32
        self._primary = primary
        self._make_fallback = make_fallback
        self._fallback: Session | None = None
        self._lock = threading.Lock()
        self._use_fallback = False

    def _fallback_session(self) -> Session:
        with self._lock:
            if self._fallback is None:
                self._fallback = self._make_fallback()
            return self._fallback

    def _run_fallback(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        fallback = self._fallback_session()
        cast = {s.name: feeds[s.name].astype(s.dtype) for s in fallback.inputs}
        # The outputs stay fp32: cast back to fp16 they could overflow again.
        return fallback.run(cast)

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        if self._use_fallback:
            return self._run_fallback(feeds)
        outputs = self._primary.run(feeds)
        if self._make_fallback is None or all_finite(outputs):
            return outputs
        self.fallbacks += 1
        logger.warning(
            "%s: the fp16 engine gave NaN/Inf (fp16 overflow); running it in fp32%s",
            self.name,
            " from now on" if self.sticky else "",
        )
        if self.sticky:
            self._use_fallback = True
        return self._run_fallback(feeds)
