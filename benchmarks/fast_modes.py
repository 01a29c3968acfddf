"""Fast modes as benchmark contenders: ``BACKEND+MODE[+MODE...]``, e.g. ``ort-cpu+int8``.

Each mode is a build option (the harness builds a variant folder from the same source with
it) and/or per-call arguments (the sdrt worker passes them to ``Pipeline.__call__``). Its
speed is reported against exact sdrt on the same backend (the contender named by the bare
backend, when it runs too) and eager diffusers, and its image is compared with exact sdrt's
image on the same latents: what the mode costs in quality, next to what it saves in time.

    int8               sdrt build --precision int8 (on openvino: --int8-method nncf, the
                       int8 U-Net that backend runs fastest)
    deepcacheN[bB]     sdrt build --deep-cache --deep-cache-branches B (0); deep_cache_interval=N
    tomeR              sdrt build --tome-ratio R (max downsample 1)
    tinyvae            sdrt build --tiny-vae FOLDER (a random one made here for --random-weights)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from sdrt.errors import InputError

SEPARATOR = "+"
MODE_GRAMMAR = "int8, deepcacheN[bB] (e.g. deepcache3, deepcache3b1), tomeR (e.g. tome0.5), tinyvae"
_DEEP_CACHE = re.compile(r"^deepcache(?P<interval>\d+)(?:b(?P<branch>\d+))?$")
_TOME = re.compile(r"^tome(?P<ratio>0?\.\d+)$")
# The value of a build option that the harness fills in: the tiny VAE folder it prepared.
TINY_VAE_FOLDER = "<tiny-vae-folder>"


@dataclass(frozen=True)
class FastMode:
    word: str  # as written in the contender name
    build: tuple[tuple[str, Any], ...] = ()  # BuildConfig field -> value
    call: tuple[tuple[str, Any], ...] = ()  # Pipeline.__call__ keyword -> value


@dataclass(frozen=True)
class ModeContender:
    """A contender name split: the sdrt backend and the modes it runs with (maybe none)."""

    name: str
    backend: str
    modes: tuple[FastMode, ...]

    @property
    def build_options(self) -> dict[str, Any]:
        return {key: value for mode in self.modes for key, value in mode.build}

    @property
    def call_options(self) -> dict[str, Any]:
        return {key: value for mode in self.modes for key, value in mode.call}

    @property
    def variant_key(self) -> str | None:
        """Which built folder it needs: None for the plain build, else a hash of its options."""
        options = self.build_options
        if not options:
            return None
        text = json.dumps(options, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# The int8 method each backend's int8 mode is built with (others: ONNX Runtime's QDQ graph).
INT8_METHOD_OF_BACKEND = {"openvino": "nncf"}


def parse_mode(word: str, backend: str = "ort-cpu") -> FastMode:
    if word == "int8":
        method = INT8_METHOD_OF_BACKEND.get(backend)
        extra = (("int8_method", method),) if method else ()
        return FastMode(word, build=(("precision", "int8"), *extra))
    if word == "tinyvae":
        return FastMode(word, build=(("tiny_vae", TINY_VAE_FOLDER),), call=(("vae", "tiny"),))
    match = _DEEP_CACHE.match(word)
    if match:
        interval, branch = int(match["interval"]), int(match["branch"] or 0)
        if interval < 1:
            raise InputError(f"fast mode {word!r}: expected an interval >= 1")
        return FastMode(
            word,
            build=(("deep_cache_branches", (branch,)),),
            call=(("deep_cache_interval", interval), ("deep_cache_branch", branch)),
        )
    match = _TOME.match(word)
    if match:
        from sdrt.export.tome_options import TomeOptions

        return FastMode(word, build=(("tome", TomeOptions(float(match["ratio"]))),))
    raise InputError(f"unknown fast mode {word!r}; expected one of: {MODE_GRAMMAR}")


def split_contender(name: str) -> ModeContender:
    """``ort-cpu+int8+deepcache3`` -> backend ``ort-cpu`` with two modes; InputError for an
    unknown or repeated mode, or two modes that set the same option differently."""
    backend, *words = name.split(SEPARATOR)
    modes = tuple(parse_mode(word, backend) for word in words)
    seen: dict[str, Any] = {}
    for mode in modes:
        for key, value in (*mode.build, *mode.call):
            if key in seen:
                raise InputError(
                    f"contender {name!r}: {mode.word!r} sets {key} again (already {seen[key]!r})"
                )
            seen[key] = value
    return ModeContender(name, backend, modes)


def exact_name(name: str) -> str | None:
    """The exact contender a mode contender is compared with (its bare backend); None for
    a contender without modes."""
    backend, *words = name.split(SEPARATOR)
    return backend if words else None


def resolve_placeholders(options: dict[str, Any], config, report) -> dict[str, Any]:
    """``options`` with the values the harness prepares filled in (the tiny VAE folder)."""
    if options.get("tiny_vae") != TINY_VAE_FOLDER:
        return options
    return {**options, "tiny_vae": str(tiny_vae_folder(config, report))}


def tiny_vae_folder(config, report) -> str:
    """The tiny VAE the ``tinyvae`` mode builds with: ``--tiny-vae`` as given, else for a
    random-weight architecture a random TAESD of its family, made once in the cache."""
    if config.tiny_vae is not None:
        return config.tiny_vae
    if config.random_arch is None:
        raise InputError(
            "fast mode 'tinyvae': expected --tiny-vae FOLDER|HUB_ID (a diffusers "
            "AutoencoderTiny, e.g. madebyollin/taesd) for a benchmark of SOURCE"
        )
    from sdrt.export.random_tiny_vae import init_random_tiny_vae

    arch = random_tiny_vae_arch(config.random_arch)
    folder = config.cache_dir / "random" / arch / f"seed-{config.seed}"
    # init_random_tiny_vae renames the folder into place only once complete.
    if not (folder / "config.json").is_file():
        report(f"making {arch} with random weights (seed {config.seed})")
        init_random_tiny_vae(arch, folder, seed=config.seed, force=folder.exists())
    return str(folder)


def random_tiny_vae_arch(arch: str) -> str:
    """The random TAESD that fits a random-weight architecture's VAE."""
    if arch.startswith("tiny"):
        return "tiny-taesd"
    return "taesdxl" if "xl" in arch else "taesd"
