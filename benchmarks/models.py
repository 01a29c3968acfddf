"""The folders a benchmark needs: the diffusers source (torch), the built ONNX folder, and
the folders peers export themselves (Optimum-Intel's OpenVINO IR).

With ``--arch ... --random-weights`` the source is made here with random weights, so a
benchmark of a real architecture runs offline. Both live under the cache folder and are
reused only when they are what this run asks for: the built folder's manifest must record
the source's current content hash and build options that cover the requested sizes, batch
and precision. Reusing it keeps sdrt's saved optimised graphs (``engines/``) between runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sdrt.benchmarks.config import BenchConfig

from sdrt.errors import InputError, ModelFolderError, SdrtError

Report = Callable[[str], None]
# Image sizes (pixels) a cached build covers at least.
BUILD_RANGE = (256, 1024)


@dataclass(frozen=True)
class BenchModels:
    source_dir: Path  # diffusers folder: the torch contender loads it
    built_dir: Path  # sdrt build output: sdrt and Optimum load it
    source_label: str  # the SOURCE argument, or "random <arch> (seed N)"
    built_reused: bool
    # Fast-mode variants (benchmarks/fast_modes.py): variant key -> its built folder.
    variants: dict[str, Path] = field(default_factory=dict)


def _random_source(config: BenchConfig, report: Report) -> Path:
    from sdrt.export.random_model import init_random_model

    folder = config.cache_dir / "random" / config.random_arch / f"seed-{config.seed}"
    # init_random_model renames the folder into place only once complete.
    if not (folder / "model_index.json").is_file():
        report(f"making {config.random_arch} with random weights (seed {config.seed})")
        init_random_model(config.random_arch, folder, seed=config.seed, force=folder.exists())
    return folder


def source_content_sha256(source_dir: Path) -> str:
    """The content hash ``sdrt build`` records for a source folder (same folders, same order)."""
    from sdrt.export.source import COPIED_FOLDERS, MODEL_FOLDERS, FolderHasher

    hashed = [name for name in MODEL_FOLDERS + COPIED_FOLDERS if (source_dir / name).exists()]
    return FolderHasher(source_dir).folders((*hashed, "model_index.json"))


def _reusable(
    built_dir: Path, source_dir: Path, config: BenchConfig, precision: str | None = None
) -> bool:
    from sdrt.manifest import read_manifest

    if not built_dir.is_dir():
        return False
    try:
        manifest = read_manifest(built_dir)
    except ModelFolderError:
        return False
    sizes = [s for size in config.sizes for s in (size.height, size.width)]
    options = manifest.build
    return (
        manifest.source.content_sha256 == source_content_sha256(source_dir)
        and options.precision == (precision or config.precision)
        and options.min_size <= min(sizes)
        and options.max_size >= max(sizes)
        and options.max_batch >= config.batch
        and all(s % options.size_multiple == 0 for s in sizes)
    )


def prepare_models(config: BenchConfig, report: Report) -> BenchModels:
    from sdrt.export.source import resolve_source

    if config.random_arch is not None:
        source_dir = _random_source(config, report)
        label = f"random {config.random_arch} (seed {config.seed})"
    else:
        source_dir = resolve_source(config.source).folder
        label = config.source
    report("checking the built model folder")
    if config.built_dir is not None:
        if not _reusable(config.built_dir, source_dir, config):
            raise InputError(
                f"--built {str(config.built_dir)!r} is not a build of {label!r} that covers "
                f"sizes {[s.label for s in config.sizes]}, batch {config.batch} and "
                f"{config.precision} (its sdrt.json records another source, range or precision)"
            )
        return BenchModels(source_dir, config.built_dir, label, built_reused=True)
    key = hashlib.sha256(str(source_dir.resolve()).encode()).hexdigest()[:12]
    built_dir = config.cache_dir / "built" / key
    if _reusable(built_dir, source_dir, config):
        return BenchModels(source_dir, built_dir, label, built_reused=True)
    report(f"building {label} ({config.precision})")
    _build(config, source_dir, built_dir, {}, report)
    return BenchModels(source_dir, built_dir, label, built_reused=False)


def _build(
    config: BenchConfig, source_dir: Path, built_dir: Path, options: dict, report: Report
) -> None:
    """``sdrt build`` of the source into ``built_dir``, with a fast mode's ``options``."""
    from sdrt.export.build import BuildConfig, build

    sizes = [s for size in config.sizes for s in (size.height, size.width)]
    built_dir.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "source": str(source_dir),
        "output": built_dir,
        "precision": config.precision,
        # A wide range, so that runs at other sizes reuse this build (and sdrt's saved
        # optimised graphs); the build verifies at the small end, so it costs little.
        "min_size": min(BUILD_RANGE[0], *sizes),
        "max_size": max(BUILD_RANGE[1], *sizes),
        "max_batch": max(config.batch, 1),
        "force": True,
    }
    build(
        BuildConfig(**{**settings, **options}),
        progress=lambda component, stage: report(f"building {component}: {stage}"),
    )
    if any(name.split("+")[0] == "ort-cpu" for name in config.backends):
        # as `sdrt build --target ort-cpu` does: sdrt's loads then map the saved graphs
        from sdrt.backends.ort_saved_graphs import save_optimized_models
        from sdrt.manifest import read_manifest

        report("saving the optimised ONNX Runtime CPU graphs")
        save_optimized_models(built_dir, read_manifest(built_dir))


# Written into a variant folder once built: the fast-mode options it was built with, so a
# later run reuses it only for the same options (its sdrt.json says the rest).
VARIANT_RECORD = "bench-variant.json"


def prepare_variants(
    config: BenchConfig, models: BenchModels, contenders, report: Report
) -> BenchModels:
    """Build (or reuse) one folder per distinct set of fast-mode build options among
    ``contenders`` (fast_modes.ModeContender), beside the plain build."""
    from sdrt.benchmarks import fast_modes

    variants = dict(models.variants)
    for contender in contenders:
        key = contender.variant_key
        if key is None or key in variants:
            continue
        options = fast_modes.resolve_placeholders(contender.build_options, config, report)
        # in the cache, never beside a --built folder of the user's
        source_key = hashlib.sha256(str(models.source_dir.resolve()).encode()).hexdigest()[:12]
        folder = config.cache_dir / "built" / f"{source_key}-{key}"
        record = json.dumps(options, sort_keys=True, default=str)
        precision = options.get("precision", config.precision)
        recorded = folder / VARIANT_RECORD
        reusable = (
            recorded.is_file()
            and recorded.read_text() == record
            and _reusable(folder, models.source_dir, config, precision)
        )
        if not reusable:
            modes = "+".join(m.word for m in contender.modes)
            report(f"building {models.source_label} with {modes}")
            _build(config, models.source_dir, folder, options, report)
            recorded.write_text(record)
        variants[key] = folder
    return replace(models, variants=variants)


# Written into a peer's exported folder once its export succeeded: the export command's
# options and the source's content hash, so a later run reuses it only for the same ones.
EXPORT_RECORD = "bench-export.json"
# Lines of a failed export's log that its error quotes.
EXPORT_LOG_TAIL = 5


def prepare_export(
    config: BenchConfig, models: BenchModels, command: tuple[str, ...], log: Path, report: Report
) -> Path:
    """The folder a peer's export ``command`` (interpreter, module, options) makes from the
    source, run once into the cache and reused while options and source are unchanged;
    SdrtError with the end of its log when the export fails."""
    import shutil
    import subprocess

    from sdrt.benchmarks import fast_modes

    command = tuple(
        fast_modes.tiny_vae_folder(config, report) if word == fast_modes.TINY_VAE_FOLDER else word
        for word in command
    )
    options = list(command[1:])  # not the interpreter: the same export from another venv
    record = json.dumps(
        {"export": options, "source_content_sha256": source_content_sha256(models.source_dir)},
        sort_keys=True,
    )
    key = hashlib.sha256(f"{models.source_dir.resolve()}|{options}".encode()).hexdigest()[:12]
    folder = config.cache_dir / "exported" / key
    recorded = folder / EXPORT_RECORD
    if recorded.is_file() and recorded.read_text() == record:
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # an export of other options or source, or one cut short
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    report(f"exporting {models.source_label} with {' '.join(options[2:]) or 'defaults'}")
    with open(log, "w") as output:
        done = subprocess.run(
            [*command, str(models.source_dir), str(folder)], stdout=output, stderr=output
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-EXPORT_LOG_TAIL:]
        raise SdrtError(f"the export failed (exit {done.returncode}): {' | '.join(tail)}")
    recorded.write_text(record)
    return folder
