"""The fp16 VAE's NaN guard and fp32 fallback, with numpy sessions standing in for engines."""

from __future__ import annotations

import logging

import numpy as np

from sdrt.backends.nan_guard import NanGuardedSession, all_finite
from sdrt.manifest import TensorSpec


class Decoder:
    """latent_sample -> sample = 2 * latents in its dtype; fp16 overflows above 32752."""

    def __init__(self, dtype):
        self.name = "vae_decoder"
        self.inputs = (TensorSpec("latent_sample", dtype, ("batch", 4, "h", "w")),)
        self.outputs = (TensorSpec("sample", dtype, ("batch", 4, "h", "w")),)
        self.calls = []

    def run(self, feeds):
        x = feeds["latent_sample"]
        assert str(x.dtype) == self.inputs[0].dtype
        self.calls.append(x)
        with np.errstate(over="ignore"):
            return {"sample": (x * 2).astype(self.inputs[0].dtype)}


def guarded(**kwargs):
    fp16, fp32 = Decoder("float16"), Decoder("float32")
    made = []

    def make_fallback():
        made.append(fp32)
        return fp32

    return NanGuardedSession(fp16, make_fallback, **kwargs), fp16, fp32, made


def test_finite_outputs_pass_through_without_making_the_fallback():
    session, fp16, _, made = guarded()
    latents = np.ones((1, 4, 2, 2), np.float16)
    out = session.run({"latent_sample": latents})
    assert np.array_equal(out["sample"], latents * 2)
    assert made == [] and session.fallbacks == 0
    assert (session.name, session.inputs) == (fp16.name, fp16.inputs)


def test_overflow_reruns_in_fp32_and_stays_there(caplog):
    session, fp16, fp32, made = guarded()
    big = np.full((1, 4, 2, 2), 40000, np.float16)
    with caplog.at_level(logging.WARNING, logger="sdrt.backends.nan_guard"):
        out = session.run({"latent_sample": big})
    assert "fp16 overflow" in caplog.text
    assert made == [fp32] and session.fallbacks == 1
    # The fp32 session got the same latents in fp32; its result stays fp32 (80000 does
    # not fit fp16).
    assert fp32.calls[0].dtype == np.float32
    assert np.array_equal(fp32.calls[0], big.astype(np.float32))
    assert out["sample"].dtype == np.float32 and np.all(out["sample"] == 80000)
    small = np.ones((1, 4, 2, 2), np.float16)
    out = session.run({"latent_sample": small})
    assert len(fp16.calls) == 1 and len(fp32.calls) == 2  # sticky: fp16 not tried again
    assert np.array_equal(out["sample"], small * 2)


def test_not_sticky_tries_fp16_first_every_time():
    session, fp16, fp32, made = guarded(sticky=False)
    session.run({"latent_sample": np.full((1, 4, 1, 1), 40000, np.float16)})
    session.run({"latent_sample": np.ones((1, 4, 1, 1), np.float16)})
    assert len(fp16.calls) == 2 and len(fp32.calls) == 1 and len(made) == 1


def test_without_a_fallback_the_nan_reaches_the_caller():
    fp16 = Decoder("float16")
    session = NanGuardedSession(fp16, None)
    out = session.run({"latent_sample": np.full((1, 4, 1, 1), 40000, np.float16)})
    assert not all_finite(out)


def test_all_finite():
    assert all_finite({"a": np.zeros(3), "b": np.ones(2, np.float16)})
    assert not all_finite({"a": np.zeros(3), "b": np.array([1.0, np.nan])})
    assert not all_finite({"a": np.array([np.inf])})
