"""The contenders a benchmark can run, each as a worker process in its own interpreter.

``torch[+tinyvae]`` is diffusers' own eager pipeline, ``optimum`` Optimum's ORT pipeline and
``optimum-intel[+int8][+tinyvae]`` Optimum-Intel's OpenVINO pipeline (each in its own
virtualenv; Optimum-Intel on a folder it exported itself, see optimum_intel_export.py), and
every sdrt backend name (``ort-cpu``, ...) the sdrt runtime; a backend with
fast modes (``ort-cpu+int8+deepcache3``, benchmarks/fast_modes.py) runs sdrt on the variant
folder built with those modes, with their per-call arguments.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sdrt.benchmarks import fast_modes

from sdrt.errors import InputError

PACKAGE = "sdrt.benchmarks.contenders"
BASELINE = "torch"


@dataclass(frozen=True)
class ContenderSpec:
    name: str
    command: tuple[str, ...]  # interpreter and module; the worker's arguments follow
    extra_args: tuple[str, ...]
    model: str  # "source" (diffusers folder) or "built" (sdrt / Optimum ONNX folder)
    # Extra arguments that make the worker load without saved optimised graphs (optimising
    # every graph at load, as Optimum does); None: the contender has no such load.
    no_saved_graphs_args: tuple[str, ...] | None = None
    # The variant build it loads (fast_modes.ModeContender.variant_key); None: the plain one.
    variant: str | None = None
    # The command (interpreter, module, options) that makes this contender's own model folder
    # from the source: the harness appends SOURCE OUT and runs it once, untimed, into the
    # cache; None: the contender loads the source or sdrt's build. An argument equal to
    # fast_modes.TINY_VAE_FOLDER stands for the tiny VAE the harness prepares.
    export: tuple[str, ...] | None = None


# The baseline's own mode: diffusers' AutoencoderTiny put in as the pipeline's VAE (as
# diffusers' docs do), so that eager diffusers runs the recipe of the tinyvae contenders.
BASELINE_MODES = ("tinyvae",)
OPTIMUM_INTEL = "optimum-intel"
# Optimum-Intel's own fast modes, as words after its name: its NNCF int8 and a tiny VAE.
OPTIMUM_INTEL_MODES = ("int8", "tinyvae")
PEERS = ("optimum", OPTIMUM_INTEL)
# The exact sdrt contender a peer's image is compared with, the first of these that runs:
# sdrt on the peer's own engine first.
EXACT_FOR_PEERS = ("openvino", "ort-cpu")


def known_contenders() -> tuple[str, ...]:
    from sdrt.backends import BACKENDS

    return (BASELINE, *PEERS, *(name for name in BACKENDS if name != "auto"))


def _own_modes(name: str, owner: str, modes: tuple[str, ...]) -> tuple[str, ...] | None:
    """The modes of ``name`` when it names ``owner`` (a contender whose modes are its own,
    not sdrt's), sorted; None for a name of another contender; InputError for a mode
    ``owner`` has not, or one repeated."""
    first, *words = name.split(fast_modes.SEPARATOR)
    if first != owner:
        return None
    for word in words:
        if word not in modes or words.count(word) > 1:
            raise InputError(
                f"contender {name!r}: expected {owner} with some of the modes "
                f"{', '.join(modes)}, each once, got {word!r}"
            )
    return tuple(sorted(words))


def optimum_intel_modes(name: str) -> tuple[str, ...] | None:
    """``optimum-intel+int8+tinyvae`` -> its modes (("int8", "tinyvae")); None for a name
    of another contender; InputError for a mode Optimum-Intel has not, or one repeated."""
    return _own_modes(name, OPTIMUM_INTEL, OPTIMUM_INTEL_MODES)


def baseline_modes(name: str) -> tuple[str, ...] | None:
    """``torch+tinyvae`` -> (("tinyvae",)); ``torch`` -> (); None for another contender;
    InputError for a mode eager diffusers is not run with here."""
    return _own_modes(name, BASELINE, BASELINE_MODES)


def is_baseline(name: str) -> bool:
    """Eager diffusers, with or without its tiny VAE."""
    return name.split(fast_modes.SEPARATOR)[0] == BASELINE


def baseline_for(name: str, names: tuple[str, ...]) -> str | None:
    """The eager diffusers contender among ``names`` whose time and image ``name``'s are
    compared with: the one on the same VAE (``torch+tinyvae`` for a contender with the
    tinyvae mode, when it runs: the same recipe), else ``torch``; None for ``torch`` itself
    or when none runs."""
    if name == BASELINE:
        return None
    tiny_baseline = f"{BASELINE}{fast_modes.SEPARATOR}tinyvae"
    uses_tiny_vae = "tinyvae" in name.split(fast_modes.SEPARATOR)[1:]
    if uses_tiny_vae and not is_baseline(name) and tiny_baseline in names:
        return tiny_baseline
    return BASELINE if BASELINE in names else None


def is_peer(name: str) -> bool:
    return name == "optimum" or name.split(fast_modes.SEPARATOR)[0] == OPTIMUM_INTEL


def exact_reference(name: str, names: tuple[str, ...]) -> str | None:
    """The exact sdrt contender among ``names`` whose image ``name``'s is compared with: a
    fast mode's bare backend, for a peer sdrt on the same engine (else on ONNX Runtime);
    None for an exact contender, the baseline, or when none of them runs."""
    if is_baseline(name):
        return None
    if is_peer(name):
        return next((exact for exact in EXACT_FOR_PEERS if exact in names), None)
    return fast_modes.exact_name(name)


def mode_contenders(names: tuple[str, ...]) -> list[fast_modes.ModeContender]:
    """The sdrt contenders with fast modes among ``names`` (their variant folders are built)."""
    return [
        fast_modes.split_contender(name)
        for name in names
        if not is_peer(name) and not is_baseline(name) and fast_modes.exact_name(name)
    ]


def resolve(
    name: str, optimum_venv: Path | None, optimum_intel_venv: Path | None = None
) -> ContenderSpec:
    """The spec for contender ``name``; ``BackendUnavailableError`` says why one cannot run."""
    from sdrt.backends import BACKENDS

    own = baseline_modes(name)
    if own is not None:
        from sdrt.benchmarks.contenders.torch_diffusers import TINY_VAE

        tiny = (TINY_VAE, fast_modes.TINY_VAE_FOLDER) if "tinyvae" in own else ()
        return ContenderSpec(
            name, (sys.executable, "-m", f"{PACKAGE}.torch_diffusers"), tiny, "source"
        )
    if name == "optimum":
        from sdrt.benchmarks.contenders.optimum_env import OPTIMUM

        python = OPTIMUM.find_python(optimum_venv)
        return ContenderSpec(name, (str(python), "-m", f"{PACKAGE}.optimum_ort"), (), "built")
    modes = optimum_intel_modes(name)
    if modes is not None:
        return _optimum_intel(name, modes, optimum_intel_venv)
    if name in BACKENDS:
        from sdrt.benchmarks.contenders.sdrt_runtime import NO_SAVED_GRAPHS, SAVES_GRAPHS

        return ContenderSpec(
            name,
            (sys.executable, "-m", f"{PACKAGE}.sdrt_runtime"),
            (name,),
            "built",
            no_saved_graphs_args=(NO_SAVED_GRAPHS,) if name in SAVES_GRAPHS else None,
        )
    if fast_modes.SEPARATOR in name:
        return _with_modes(name)
    raise InputError(
        f"--backends: unknown contender {name!r}; expected some of {', '.join(known_contenders())}"
    )


def _optimum_intel(name: str, modes: tuple[str, ...], venv: Path | None) -> ContenderSpec:
    from sdrt.benchmarks.contenders.optimum_env import OPTIMUM_INTEL
    from sdrt.benchmarks.contenders.optimum_intel_export import INT8, TINY_VAE

    python = str(OPTIMUM_INTEL.find_python(venv))
    options: tuple[str, ...] = ()
    if "int8" in modes:
        options += (INT8,)
    if "tinyvae" in modes:
        options += (TINY_VAE, fast_modes.TINY_VAE_FOLDER)
    return ContenderSpec(
        name,
        (python, "-m", f"{PACKAGE}.optimum_intel"),
        (),
        "exported",
        export=(python, "-m", f"{PACKAGE}.optimum_intel_export", *options),
    )


def is_known(name: str) -> bool:
    """A contender ``resolve`` takes: a known name, an sdrt backend with fast modes, or
    Optimum-Intel or eager diffusers with their own modes (InputError for modes they have
    not)."""
    if name in known_contenders() or optimum_intel_modes(name) is not None:
        return True
    if baseline_modes(name) is not None:
        return True
    backend = fast_modes.exact_name(name)
    return (
        backend is not None and backend in known_contenders() and backend not in (BASELINE, *PEERS)
    )


def _with_modes(name: str) -> ContenderSpec:
    import json

    from sdrt.benchmarks.contenders.sdrt_runtime import CALL_OPTIONS

    from sdrt.backends import BACKENDS

    contender = fast_modes.split_contender(name)
    if contender.backend not in BACKENDS or contender.backend == "auto":
        raise InputError(
            f"--backends: fast modes run on an sdrt backend, got {contender.backend!r} in "
            f"{name!r}; expected one of {', '.join(n for n in BACKENDS if n != 'auto')}"
        )
    call = json.dumps(contender.call_options, sort_keys=True)
    return ContenderSpec(
        name,
        (sys.executable, "-m", f"{PACKAGE}.sdrt_runtime"),
        (contender.backend, CALL_OPTIONS, call),
        "built",
        variant=contender.variant_key,
    )
