"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class SdrtError(Exception):
    """Base class: a message that says what was expected and what came."""


class InputError(SdrtError, ValueError):
    """A bad argument, path, size or option given by the user."""


class ModelFolderError(SdrtError):
    """A folder that is not a valid sdrt / diffusers model folder, or whose files changed."""


class VerificationError(SdrtError):
    """An exported graph or built engine disagrees with its reference above the threshold."""


class BackendUnavailableError(SdrtError):
    """A requested backend (provider, TensorRT, CUDA) is not present on this machine."""


class NumericsError(SdrtError):
    """A computation produced NaN or Inf (e.g. an fp16 VAE that overflowed)."""
