"""Scheduler configuration: the frozen config dataclass, its checks, and loading it.

``NoiseScheduleConfig`` holds the keys of diffusers' scheduler_config.json that every
scheduler shares; each algorithm's file subclasses it with the keys of its diffusers
class. ``make_config`` turns file values into a checked config (unknown keys ignored,
as diffusers' from_config does); ``load_scheduler_config`` reads the file of a model folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import reprlib
from dataclasses import dataclass
from typing import Any, ClassVar

from sdrt.errors import InputError, ModelFolderError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def check_choice(key: str, value: Any, choices: tuple, scheduler: str) -> None:
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise InputError(f"{scheduler}: {key}={value!r} is not supported; expected one of {valid}")


def _has_kind(value: Any, kind: str) -> bool:
    """Whether a config value fits one alternative of its field's annotation."""
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple[") and kind.endswith(", ...]"):  # e.g. tuple[float, ...]
        item_kind = kind[len("tuple[") : -len(", ...]")]
        return isinstance(value, tuple) and all(_has_kind(item, item_kind) for item in value)
    raise TypeError(f"config annotation {kind!r} has no check")


def _describe_kind(kind: str) -> str:
    if kind.startswith("tuple["):  # what JSON spells as a list
        return f"a list of {kind[len('tuple[') : -len(', ...]')]}"
    return kind


@dataclass(frozen=True, kw_only=True)
class NoiseScheduleConfig:
    """The keys of diffusers' scheduler_config.json that define the training noise schedule.

    Defaults are those of diffusers' DDIMScheduler; each scheduler's config subclass
    restates the defaults its diffusers class has, so ``from_config`` semantics hold:
    a key present in the file wins, an absent key takes the class's default.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    # Subclasses whose diffusers class has `rescale_betas_zero_snr` declare that field;
    # the sigma-based ones also floor the terminal alpha_bar, as their diffusers class does.
    TERMINAL_ALPHA_FLOOR: ClassVar[bool] = False

    # Each subclass narrows these to what its algorithm implements.
    PREDICTION_TYPES: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction", "sample")

    def validate(self, scheduler: str) -> None:
        """Raise InputError for a value of the wrong type or that this scheduler does not
        implement."""
        self.check_types(scheduler)
        if self.trained_betas is None:
            check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES, scheduler)
        elif len(self.trained_betas) != self.num_train_timesteps:
            raise InputError(
                f"{scheduler}: trained_betas has {len(self.trained_betas)} entries; expected "
                f"num_train_timesteps={self.num_train_timesteps}"
            )
        check_choice("prediction_type", self.prediction_type, self.PREDICTION_TYPES, scheduler)
        check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS, scheduler)
        if self.num_train_timesteps < 2:
            raise InputError(
                f"{scheduler}: num_train_timesteps must be >= 2; got {self.num_train_timesteps}"
            )
        for key, choices in self.unsupported_values().items():
            check_choice(key, getattr(self, key), choices, scheduler)

    def check_types(self, scheduler: str) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kinds = [kind.strip() for kind in str(field.type).split("|")]
            if not any(_has_kind(value, kind) for kind in kinds):
                expected = " or ".join(_describe_kind(kind) for kind in kinds)
                raise InputError(
                    f"{scheduler}: config key {field.name} must be {expected}; "
                    f"got {reprlib.repr(value)} ({type(value).__name__})"
                )

    def unsupported_values(self) -> dict[str, tuple]:
        """Keys whose diffusers options this runtime does not implement -> values it does."""
        return {}

    @classmethod
    def normalized(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Values as diffusers' __init__ rewrites them (e.g. another solver's solver_type)."""
        return values


def config_fields(config_class: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(config_class))


def make_config(config_class: type, values: dict[str, Any], scheduler: str):
    """Build a frozen config from file values (unknown keys ignored, as diffusers does)."""
    known = set(config_fields(config_class))
    kwargs = {k: v for k, v in config_class.normalized(dict(values)).items() if k in known}
    if isinstance(kwargs.get("trained_betas"), (list, tuple)):  # JSON has lists, not tuples
        kwargs["trained_betas"] = tuple(kwargs["trained_betas"])
    try:
        config = config_class(**kwargs)
    except TypeError as exc:  # a wrong-typed value that the dataclass cannot take
        raise InputError(f"{scheduler}: invalid scheduler config: {exc}") from exc
    config.validate(scheduler)
    return config


def load_scheduler_config(model_folder: str | os.PathLike) -> dict[str, Any]:
    """The dict in <model_folder>/scheduler/scheduler_config.json."""
    path = os.path.join(os.fspath(model_folder), "scheduler", "scheduler_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError as exc:
        raise ModelFolderError(
            f"no scheduler config in {os.fspath(model_folder)!r}: expected {path}"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"cannot read scheduler config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelFolderError(
            f"scheduler config {path} must hold a JSON object; got {type(config).__name__}"
        )
    return config


def check_original_inference_steps(config, scheduler: str) -> None:
    """The consistency samplers' (LCM, TCD) distillation grid fits the training timesteps."""
    if not 1 <= config.original_inference_steps <= config.num_train_timesteps:
        raise InputError(
            f"{scheduler}: original_inference_steps must be in [1, "
            f"{config.num_train_timesteps}]; got {config.original_inference_steps}"
        )
