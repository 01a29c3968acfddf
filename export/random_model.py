"""Make a diffusers-format Stable Diffusion folder with random weights, offline.

No weights can be downloaded on our machines, so tests, the demo and the benchmarks run on
real SD architectures (``export/architectures.py``) with random weights from a fixed seed and
a CLIP-compatible tokenizer learned locally (``export/clip_bpe.py``). The folder has the same
files a Hub SD repo has (model_index.json, scheduler/, tokenizer/, text_encoder/, unet/, vae/,
plus tokenizer_2/ and text_encoder_2/ for XL; safetensors weights) and loads in diffusers'
pipelines as it is.

The weights are diffusers' and transformers' own default initialisation, drawn under a seeded
and scoped torch RNG, so the same seed gives the same weights and the caller's global RNG is
left as it was.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdrt.export import clip_bpe
from sdrt.export.architectures import ARCHITECTURES, Architecture, Component

from sdrt.errors import InputError
from sdrt.files import check_output_folder, with_umask_mode
from sdrt.recipes import MODEL_INDEX_KEY

__all__ = ["ARCHITECTURES", "init_random_model"]

# Weights that default initialisation leaves at zero would cut a path through the network
# (a zero cross-attention output projection makes the prompt irrelevant); they are redrawn
# with this standard deviation.
ZERO_WEIGHT_REDRAW_STD = 0.02
# Write each diffusers model as one safetensors file, as the Hub repos have them.
MAX_SHARD_SIZE = "100GB"
# What makes a folder one init-model may replace (with --force): a diffusers pipeline's index.
PIPELINE_MARKER = "model_index.json"


def init_random_model(
    arch: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write architecture ``arch`` with random weights from ``seed`` into ``out_dir``.

    The folder is written beside ``out_dir`` under a temporary name and renamed into place
    when complete, so an interrupted run leaves nothing that looks like a model. An existing
    non-empty ``out_dir`` is replaced only with ``force``, and only if it is a model folder
    (it holds model_index.json). Returns the folder's path.
    """
    if arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {arch!r}; expected one of: {', '.join(ARCHITECTURES)}"
        )
    report = progress or (lambda message: None)
    out_dir = write_staged(
        out_dir,
        seed,
        force,
        lambda staging: _write_model(ARCHITECTURES[arch], staging, seed, report),
        marker=PIPELINE_MARKER,
    )
    report(f"wrote {arch} with random weights (seed {seed}) to {out_dir}")
    return out_dir


def write_staged(
    out_dir: str | Path, seed, force: bool, write: Callable[[Path], None], *, marker: str
) -> Path:
    """Check ``seed`` and ``out_dir``, run ``write(staging)`` on a temporary folder beside
    ``out_dir`` and rename it into place when complete, so an interrupted run leaves nothing
    that looks like a model. An existing non-empty ``out_dir`` is replaced only with
    ``force``, and only if it holds ``marker`` (a model ``write`` makes): nothing else of the
    user's is ever deleted. Returns ``out_dir`` as a Path."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    out_dir = check_model_output(out_dir, force, marker)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        write(staging)
        with_umask_mode(staging)  # mkdtemp's folder and safetensors' files are private
        _replace(out_dir, staging, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def check_model_output(out_dir: str | Path, force: bool, marker: str = PIPELINE_MARKER) -> Path:
    """``out_dir`` as an absolute path (so that ``.`` is renamed by its name) once it is
    known that it may be written: absent, empty, or with ``force`` a model folder holding
    ``marker``. Cheap: the CLI calls it before importing torch."""
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir == Path(out_dir.anchor):
        raise InputError(f"output {str(out_dir)!r} is the root folder; expected a model folder")
    check_output_folder(out_dir, force=force, marker=marker, kind="a model folder")
    return out_dir


def _replace(out_dir: Path, staging: Path, force: bool) -> None:
    """Move the finished folder into place; an old one is moved aside first, then deleted."""
    try:
        staging.rename(out_dir)  # succeeds where out_dir is absent or an empty folder
        return
    except OSError as e:
        if not force:  # out_dir was filled by another process after the check
            raise InputError(
                f"output folder {out_dir} was filled by another process while this model was "
                "being written; pass --force to replace it"
            ) from e
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old.rmdir()
    out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old)


def _write_model(
    arch: Architecture, folder: Path, seed: int, report: Callable[[str], None]
) -> None:
    merges, vocab = _tokenizer_model()
    for name, tokenizer in arch.tokenizers.items():
        clip_bpe.write_tokenizer_folder(folder / name, vocab, merges, pad_token=tokenizer.pad_token)
    _write_json(folder / "scheduler" / "scheduler_config.json", _scheduler_config(arch))
    for name, component in arch.components.items():
        report(f"making {name} ({component.class_name})")
        _write_component(name, component, folder / name, seed, len(vocab))
    _write_json(folder / "model_index.json", model_index(arch))


@functools.cache
def _tokenizer_model() -> tuple[list[tuple[str, str]], dict[str, int]]:
    merges = clip_bpe.learn_merges(clip_bpe.builtin_corpus())
    return merges, clip_bpe.build_vocab(merges)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _scheduler_config(arch: Architecture) -> dict[str, Any]:
    return {**copy.deepcopy(dict(arch.scheduler)), "_diffusers_version": _diffusers_version()}


def model_index(arch: Architecture) -> dict[str, Any]:
    """model_index.json as diffusers writes it: pipeline class, options, component classes."""
    index: dict[str, Any] = {
        "_class_name": arch.pipeline_class,
        "_diffusers_version": _diffusers_version(),
        **copy.deepcopy(dict(arch.pipeline_options)),
        "scheduler": ["diffusers", arch.scheduler["_class_name"]],
    }
    if arch.recipe is not None:  # for `sdrt build` to record (diffusers skips "_" keys)
        index[MODEL_INDEX_KEY] = arch.recipe
    for name in arch.tokenizers:
        index[name] = ["transformers", "CLIPTokenizer"]
    for name, component in arch.components.items():
        index[name] = [component.library, component.class_name]
    return dict(sorted(index.items()))


def component_config(component: Component, tokenizer_vocab_size: int) -> dict[str, Any]:
    """The component's config with a ``vocab_size`` of None filled in from the tokenizer."""
    config = copy.deepcopy(dict(component.config))
    if "vocab_size" in config and config["vocab_size"] is None:
        config["vocab_size"] = tokenizer_vocab_size
    return config


def build_component(component: Component, config: dict[str, Any]):
    """Instantiate the component's class from its config (on torch's current default device)."""
    if component.library == "diffusers":
        import diffusers

        return getattr(diffusers, component.class_name).from_config(config)
    import transformers

    text_config = transformers.CLIPTextConfig(**config)
    return getattr(transformers, component.class_name)(text_config)


def _component_seed(seed: int, name: str) -> int:
    # Each component draws from its own stream, so adding a component changes no other.
    return zlib.crc32(f"{seed}/{name}".encode())


def _write_component(
    name: str, component: Component, folder: Path, seed: int, vocab_size: int
) -> None:
    import torch

    config = component_config(component, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_component_seed(seed, name))
        model = build_component(component, config)
        redraw_zero_weights(model)
    model.eval()
    if component.library == "diffusers":
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=MAX_SHARD_SIZE)
    else:
        model.save_pretrained(folder)


def redraw_zero_weights(model) -> list[str]:
    """Redraw weight matrices and kernels left all-zero by initialisation; return their names.

    Biases and norm parameters (1-D) stay as initialised. Draws from torch's current RNG.
    """
    import torch

    redrawn = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2 and not parameter.any():
                parameter.normal_(0.0, ZERO_WEIGHT_REDRAW_STD)
                redrawn.append(name)
    return redrawn


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
