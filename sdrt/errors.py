"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import string
from collections.abc import Mapping


class SdrtError(Exception):
    """Base class: a message that says what was expected and what came."""


class InputError(SdrtError, ValueError):
    """A bad argument, path, size or option given by the user."""


class ParameterError(InputError):
    """An InputError about a call's parameters, which its message names as ``{name}``
    fields (``{name=}`` in running text: "pass {image=} too"); the values quoted in it are
    keyword arguments, kept apart from the names.

    ``str()`` spells the names as the Python API's (``name``, ``name=``); ``spelled(names)``
    as another interface does (the CLI's ``--steps`` for ``num_inference_steps``), so that
    one check of a Request speaks to each user in the names they typed.
    """

    def __init__(self, template: str, **values):
        self.template, self.values = template, values
        super().__init__(self.spelled({}))

    def spelled(self, names: Mapping[str, str]) -> str:
        """The message with each parameter named as ``names`` says (as Python elsewhere)."""
        return self.template.format_map(_Spelling(names, self.values))

    def parameters(self) -> tuple[str, ...]:
        """The parameters the message names, in order (each once, without ``=``)."""
        fields = (field for _, field, _, _ in string.Formatter().parse(self.template) if field)
        names = (field.removesuffix("=") for field in fields if field not in self.values)
        return tuple(dict.fromkeys(names))

    def __reduce__(self):  # pickled (Ray) as made: the template and values, not the text
        return _rebuild_parameter_error, (type(self), self.template, self.values)


def _rebuild_parameter_error(cls, template, values):
    return cls(template, **values)


class _Spelling(dict):
    """format_map's mapping: the values as given; any other field is a parameter name."""

    def __init__(self, names: Mapping[str, str], values: Mapping[str, object]):
        super().__init__(values)
        self.names = names

    def __missing__(self, field: str) -> str:
        name = field.removesuffix("=")
        return self.names.get(name, field)


class ModelFolderError(SdrtError):
    """A folder that is not a valid sdrt / diffusers model folder, or whose files changed."""


class VerificationError(SdrtError):
    """An exported graph or built engine disagrees with its reference above the threshold."""


class BackendUnavailableError(SdrtError):
    """A requested backend (provider, TensorRT, CUDA) is not present on this machine."""


class NumericsError(SdrtError):
    """A computation produced NaN or Inf (e.g. an fp16 VAE that overflowed)."""


class SdrtWarning(UserWarning):
    """Something a user should know that does not stop the call (a prompt cut short). The
    Python API warns with ``warnings.warn``; the CLI prints one ``warning:`` line."""
