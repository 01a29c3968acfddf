"""Recipes: the steps, guidance scale and scheduler a distilled model is meant to run with.

Turbo, Lightning, LCM and TCD models give poor images at the usual defaults (20 steps,
guidance 7.5, the folder's scheduler). ``sdrt build`` records a recipe in sdrt.json
(``Manifest.recipe``), taken from, first to last:

- ``--recipe``: a name of ``RECIPES`` and/or ``KEY=VALUE`` settings (``parse_recipe_option``);
- the source's model_index.json ``_sdrt_recipe`` (what ``sdrt init-model`` writes for its
  Turbo architectures; diffusers ignores keys that start with ``_``), or its Hub id;
- the source's configs, where they say it unambiguously: an LCM-distilled U-Net
  (``time_cond_proj_dim``) is ``lcm``; an LCMScheduler config with a plain U-Net (an
  LCM-LoRA fused into it) ``lcm-lora``; a TCDScheduler config ``tcd``.

A call that leaves ``num_inference_steps``, ``guidance_scale``, ``scheduler`` or ``eta`` at
its default (``DEFAULT_STEPS`` and the others: numbers a caller's own 20 or 7.5 is told
apart from) takes the recipe's (``call_settings``); a guidance scale above what the recipe's
model card allows gets one warning (``RecipeGuidanceWarning``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sdrt.errors import InputError, SdrtWarning
from sdrt.manifest import Recipe
from sdrt.schedulers import ALIAS_OVERRIDES, create_scheduler, scheduler_class_name

_TRAILING = MappingProxyType({"timestep_spacing": "trailing"})  # shared, so read-only


def _named(name: str, source: str, **settings: Any) -> Recipe:
    return Recipe(name=name, source=source, **settings)


# The model cards' settings (and diffusers' docs where they say more), as each shows them:
# - SD-Turbo (stabilityai/sd-turbo's card) and SDXL-Turbo (stabilityai/sdxl-turbo's card;
#   diffusers' "SDXL Turbo" pipeline page and guide): "disable guidance scale by setting
#   guidance_scale=0.0", "use timestep_spacing='trailing' ... between 1 and 4 steps";
#   num_inference_steps=1 in both cards; the guide's from_single_file example sets
#   EulerAncestralDiscreteScheduler with timestep_spacing="trailing".
# - SDXL-Lightning (ByteDance/SDXL-Lightning's card): EulerDiscreteScheduler.from_config(...,
#   timestep_spacing="trailing"), guidance_scale=0, the step count the checkpoint is for.
# - LCM (diffusers' LatentConsistencyModelPipeline.__call__ defaults): 4 steps, guidance
#   8.5 (fed to the U-Net's guidance embedding, not as CFG), LCMScheduler.
# - LCM-LoRA (diffusers' "Performing inference with LCM-LoRA", latent-consistency/lcm-lora-*
#   cards): LCMScheduler, 4 steps (2-8), "either disable guidance_scale or use values
#   between 1.0 and 2.0".
# - TCD (h1t/TCD-SD15-LoRA, TCD-SDXL-LoRA cards): TCDScheduler, 4 steps, guidance_scale=0,
#   eta=0.3 ("a value of 0.3 often yields good results").
# - Hyper-SD's 1-step unified LoRA (ByteDance/Hyper-SD's card): TCDScheduler, 1 step,
#   guidance_scale=0, eta=1.0. (Its N-step LoRAs use DDIM with trailing timesteps:
#   --recipe steps=N,guidance=0,scheduler=DDIMScheduler,timestep_spacing=trailing.)
_TURBO = dict(
    steps=1,
    guidance_scale=0.0,
    scheduler="EulerAncestralDiscreteScheduler",
    scheduler_config=_TRAILING,
    max_guidance_scale=1.0,  # above 1 runs a CFG batch the model was not distilled for
)


def _lightning(steps: int) -> Recipe:
    return _named(
        f"sdxl-lightning-{steps}step",
        f"ByteDance/SDXL-Lightning's card ({steps}-step UNet/LoRA)",
        steps=steps,
        guidance_scale=0.0,
        scheduler="EulerDiscreteScheduler",
        scheduler_config=_TRAILING,
        max_guidance_scale=1.0,
    )


RECIPES: Mapping[str, Recipe] = MappingProxyType(
    {
        r.name: r
        for r in (
            _named("sd-turbo", "stabilityai/sd-turbo's card", **_TURBO),
            _named("sdxl-turbo", "stabilityai/sdxl-turbo's card", **_TURBO),
            _lightning(2),
            _lightning(4),
            _lightning(8),
            _named(
                "lcm",
                "diffusers' LatentConsistencyModelPipeline defaults",
                steps=4,
                guidance_scale=8.5,
                scheduler="LCMScheduler",
            ),
            _named(
                "lcm-lora",
                "diffusers' LCM-LoRA guide",
                steps=4,
                guidance_scale=1.0,
                scheduler="LCMScheduler",
                max_guidance_scale=2.0,
            ),
            _named(
                "tcd",
                "h1t/TCD-SD15-LoRA's card",
                steps=4,
                guidance_scale=0.0,
                scheduler="TCDScheduler",
                eta=0.3,
            ),
            _named(
                "hyper-sd",
                "ByteDance/Hyper-SD's card (1-step unified LoRA)",
                steps=1,
                guidance_scale=0.0,
                scheduler="TCDScheduler",
                eta=1.0,
            ),
        )
    }
)

# Hub ids whose configs do not tell their recipe (a Turbo folder looks like SD 2.1 or SDXL).
HUB_RECIPES = {"stabilityai/sd-turbo": "sd-turbo", "stabilityai/sdxl-turbo": "sdxl-turbo"}
MODEL_INDEX_KEY = "_sdrt_recipe"  # written by `sdrt init-model` for its Turbo architectures

# --recipe KEY=VALUE keys that are the recipe's own; any other key is a scheduler config key.
RECIPE_KEYS = {
    "steps": "steps",
    "guidance": "guidance_scale",
    "guidance_scale": "guidance_scale",
    "scheduler": "scheduler",
    "eta": "eta",
    "max_guidance": "max_guidance_scale",
    "max_guidance_scale": "max_guidance_scale",
}


# ---------------------------------------------------------------- --recipe


@dataclass(frozen=True)
class RecipeOption:
    """``--recipe`` as given: a recipe name and/or settings over it (or over the recipe the
    source's configs give)."""

    name: str | None
    settings: Mapping[str, Any]  # Recipe field -> value; "scheduler_config" -> its keys
    text: str


def parse_recipe_option(text: str) -> RecipeOption:
    """``NAME``, ``KEY=VALUE[,KEY=VALUE...]`` or ``NAME,KEY=VALUE,...``; InputError naming
    what was expected where the text is none of these."""
    expected = (
        f"--recipe: expected a recipe name ({', '.join(RECIPES)}) and/or KEY=VALUE settings "
        "separated by commas (steps, guidance, scheduler, eta, max_guidance, or a scheduler "
        "config key such as timestep_spacing)"
    )
    items = [item.strip() for item in str(text).split(",")]
    if not any(items) or not all(items):
        raise InputError(f"{expected}; got {text!r}")
    name = None
    if "=" not in items[0]:
        name = items.pop(0)
        if name not in RECIPES:
            raise InputError(f"{expected}; got the unknown name {name!r}")
    settings: dict[str, Any] = {}
    scheduler_config: dict[str, Any] = {}
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key or not value:
            raise InputError(f"{expected}; got {item!r} in {text!r}")
        if key == "scheduler":  # an alias may fix config keys too (dpmpp_2m_karras)
            try:
                settings["scheduler"] = scheduler_class_name(value)
            except InputError as e:
                raise InputError(f"--recipe: {e}") from None
            scheduler_config = {**ALIAS_OVERRIDES.get(value.lower(), {}), **scheduler_config}
        elif key in RECIPE_KEYS:
            settings[RECIPE_KEYS[key]] = _recipe_value(key, value)
        else:
            scheduler_config[key] = _config_value(value)
    if scheduler_config:
        settings["scheduler_config"] = scheduler_config
    return RecipeOption(name, settings, str(text))


def _recipe_value(key: str, value: str) -> Any:
    if key == "steps":
        try:
            steps = int(value)
        except ValueError:
            steps = 0
        if steps < 1:
            raise InputError(f"--recipe: steps: expected an integer >= 1, got {value!r}")
        return steps
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (key == "eta" and number > 1):
        wanted = "a number in [0, 1]" if key == "eta" else "a number >= 0"
        raise InputError(f"--recipe: {key}: expected {wanted}, got {value!r}")
    return number


def _config_value(value: str) -> Any:
    """A scheduler config value as JSON spells it (4, 1.5, true, null), else the text."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def resolve_recipe(
    option: RecipeOption | None,
    configs: Mapping[str, Mapping[str, Any]],
    model_index: Mapping[str, Any],
    source_id: str,
) -> Recipe | None:
    """The recipe a build records: ``--recipe`` (its settings over its name, or over what
    the source says), else what the source says (``recipe_of_source``); None where neither
    gives one. InputError where the result cannot run on the source's configs."""
    base = recipe_of_source(configs, model_index, source_id)
    if option is not None and option.name is not None:
        base = dataclasses.replace(RECIPES[option.name], source=f"--recipe {option.name}")
    if option is not None and option.settings:
        if base is None:
            base = Recipe(name="custom", source=f"--recipe {option.text}")
        else:
            base = dataclasses.replace(base, source=f"{base.source}, with --recipe {option.text}")
        config = {**base.scheduler_config, **option.settings.get("scheduler_config", {})}
        if "scheduler" in option.settings and option.settings["scheduler"] != base.scheduler:
            config = dict(option.settings.get("scheduler_config", {}))  # another class's keys
        settings = {k: v for k, v in option.settings.items() if k != "scheduler_config"}
        base = dataclasses.replace(base, **settings, scheduler_config=config)
    if base is None:
        return None
    check_recipe(base, configs)
    return dataclasses.replace(base, scheduler_config=dict(base.scheduler_config))  # picklable


def recipe_of_source(
    configs: Mapping[str, Mapping[str, Any]], model_index: Mapping[str, Any], source_id: str
) -> Recipe | None:
    """The recipe a source folder names (model_index.json ``_sdrt_recipe``, a known Hub id)
    or that its configs say unambiguously (LCM, TCD); None otherwise."""
    named = model_index.get(MODEL_INDEX_KEY)
    if isinstance(named, str) and named in RECIPES:
        return dataclasses.replace(RECIPES[named], source=f"model_index.json {MODEL_INDEX_KEY}")
    if source_id in HUB_RECIPES:
        return dataclasses.replace(RECIPES[HUB_RECIPES[source_id]], source=f"Hub id {source_id}")
    scheduler = configs.get("scheduler", {}).get("_class_name")
    if configs.get("unet", {}).get("time_cond_proj_dim"):
        source = "the U-Net config's time_cond_proj_dim (an LCM-distilled U-Net)"
        return dataclasses.replace(RECIPES["lcm"], source=source)
    if scheduler == "LCMScheduler":  # without a guidance embedding: an LCM-LoRA's base
        source = "the source's LCMScheduler config (a U-Net without LCM's guidance embedding)"
        return dataclasses.replace(RECIPES["lcm-lora"], source=source)
    if scheduler == "TCDScheduler":
        return dataclasses.replace(RECIPES["tcd"], source="the source's TCDScheduler config")
    return None


def check_recipe(recipe: Recipe, configs: Mapping[str, Mapping[str, Any]]) -> None:
    """InputError where the recipe cannot run on the source: its scheduler and config keys
    made from the source's scheduler config and planned for its steps; LCM's guidance
    embedding asked of a U-Net without one; a guidance scale above its own limit."""
    where = f"recipe {recipe.name!r} ({recipe.source})"
    if recipe.name == "lcm" and not configs.get("unet", {}).get("time_cond_proj_dim"):
        raise InputError(
            f"{where}: expected an LCM-distilled U-Net (config time_cond_proj_dim), which "
            "takes LCM's guidance as an embedding; this U-Net has none (for an LCM-LoRA "
            "fused into it, use --recipe lcm-lora)"
        )
    limit = recipe.max_guidance_scale
    if limit is not None and recipe.guidance_scale is not None and recipe.guidance_scale > limit:
        raise InputError(
            f"{where}: expected a guidance scale <= its max_guidance {limit:g}, got "
            f"{recipe.guidance_scale:g}"
        )
    scheduler_config = dict(configs.get("scheduler", {}))
    name = recipe.scheduler or scheduler_config.get("_class_name")
    if name is None:
        raise InputError(f"{where}: expected a scheduler= (the source's config names none)")
    try:
        scheduler = create_scheduler(name, scheduler_config, **recipe.scheduler_config)
        scheduler.plan(recipe.steps or 1, eta=recipe.eta or 0.0)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def describe(recipe: Recipe) -> str:
    """One line: the recipe's settings, as ``sdrt info`` shows them."""
    parts = []
    if recipe.steps is not None:
        parts.append(f"{recipe.steps} step{'s' if recipe.steps != 1 else ''}")
    if recipe.guidance_scale is not None:
        parts.append(f"guidance {recipe.guidance_scale:g}")
    if recipe.scheduler is not None or recipe.scheduler_config:
        keys = ", ".join(f"{k}={v}" for k, v in recipe.scheduler_config.items())
        parts.append(
            f"{recipe.scheduler or 'the folder scheduler'}" + (f" ({keys})" if keys else "")
        )
    if recipe.eta is not None:
        parts.append(f"eta {recipe.eta:g}")
    if recipe.max_guidance_scale is not None:
        parts.append(f"guidance above {recipe.max_guidance_scale:g} warned")
    return f"{recipe.name}: {', '.join(parts) or 'no settings'}  (from {recipe.source})"


# ---------------------------------------------------------------- calls


class CallDefault:
    """A call argument's default value, which a folder's recipe replaces: an int or float
    equal to the usual default, told apart from the same number a caller passes."""

    __slots__ = ()


class _DefaultInt(CallDefault, int):
    __slots__ = ()

    def __repr__(self) -> str:
        return int.__repr__(self)


class _DefaultFloat(CallDefault, float):
    __slots__ = ()

    def __repr__(self) -> str:
        return float.__repr__(self)


DEFAULT_STEPS = _DefaultInt(20)
DEFAULT_GUIDANCE_SCALE = _DefaultFloat(7.5)
DEFAULT_ETA = _DefaultFloat(0.0)


def is_default(value: Any) -> bool:
    """Whether an argument was left at its default (recipe or not, it still reads as one)."""
    return isinstance(value, CallDefault)


class RecipeGuidanceWarning(SdrtWarning):
    """A guidance scale above what the folder's recipe (its model card) allows."""


@dataclass(frozen=True)
class CallSettings:
    """A call's steps, guidance, scheduler and eta: as given, the recipe's where left at
    their defaults, else the usual defaults (plain numbers, never CallDefault)."""

    num_inference_steps: Any
    guidance_scale: Any
    scheduler: str | None
    scheduler_config: Mapping[str, Any]  # the recipe's keys for its scheduler; else empty
    eta: Any
    from_recipe: frozenset[str]  # the arguments the recipe filled in


def call_settings(
    recipe: Recipe | None, num_inference_steps: Any, guidance_scale: Any, scheduler: Any, eta: Any
) -> CallSettings:
    filled = set()

    def take(name: str, given: Any, recipe_value: Any) -> Any:
        if not is_default(given):
            return given
        if recipe_value is None:
            return int(given) if isinstance(given, int) else float(given)  # a plain number
        filled.add(name)
        return recipe_value

    steps = take("num_inference_steps", num_inference_steps, recipe and recipe.steps)
    guidance = take("guidance_scale", guidance_scale, recipe and recipe.guidance_scale)
    eta = take("eta", eta, recipe and recipe.eta)
    scheduler_config: Mapping[str, Any] = {}
    if scheduler is None and recipe is not None and (recipe.scheduler or recipe.scheduler_config):
        # a plain dict: a Request travels pickled (Ray), which a MappingProxyType cannot
        scheduler, scheduler_config = recipe.scheduler, dict(recipe.scheduler_config)
        filled.add("scheduler")
    return CallSettings(steps, guidance, scheduler, scheduler_config, eta, frozenset(filled))


def warn_guidance(recipe: Recipe | None, guidance_scale: float, embedded: bool) -> None:
    """One RecipeGuidanceWarning where ``guidance_scale`` goes above the recipe's limit as
    CFG (an LCM U-Net's guidance embedding takes any scale: no warning there)."""
    if recipe is None or recipe.max_guidance_scale is None or embedded:
        return
    if guidance_scale <= recipe.max_guidance_scale:
        return
    uses = "" if recipe.guidance_scale is None else f" uses {recipe.guidance_scale:g} and"
    warnings.warn(
        f"guidance_scale {guidance_scale:g}: this folder's {recipe.name} recipe{uses} allows "
        f"at most {recipe.max_guidance_scale:g} ({recipe.source}); a larger scale runs "
        "classifier-free guidance the model was not distilled for",
        RecipeGuidanceWarning,
        stacklevel=3,
    )
