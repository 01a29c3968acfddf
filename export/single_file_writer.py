"""Write a diffusers Stable Diffusion folder as one single-file checkpoint in the LDM layout.

What ``sdrt init-model ... --single-file`` writes, so that the tests (and anyone trying
``sdrt build model.safetensors``) have single files without downloading one. ``.safetensors``
carries ``SDRT_METADATA`` in its header; ``.ckpt`` is a plain ``torch.save`` of
``{"state_dict": ..., "sdrt": ...}``, loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sdrt.export.ldm_keys import pipeline_to_ldm
from sdrt.export.source import inspect_folder

from sdrt.errors import InputError
from sdrt.files import with_umask_mode

SUFFIXES = (".safetensors", ".ckpt")
# Header metadata of files sdrt makes: they were made with sdrt's locally learned tokenizer,
# which ``sdrt build`` then uses for them (a single file carries no tokenizer).
TOKENIZER_KEY = "sdrt.tokenizer"
LOCAL_TOKENIZER = "sdrt-clip-bpe"
ARCHITECTURE_KEY = "sdrt.architecture"


def component_state_dicts(folder: Path) -> tuple[str, dict[str, dict], dict[str, Mapping]]:
    """(family, folder name -> float32 state dict, folder name -> config) of a diffusers
    folder's unet, vae and text encoder(s)."""
    import diffusers
    import torch
    import transformers

    source = inspect_folder(folder, str(folder))
    state_dicts = {}
    for name, class_name in source.text_encoder_classes.items():
        model = getattr(transformers, class_name).from_pretrained(
            folder / name, torch_dtype=torch.float32
        )
        state_dicts[name] = model.state_dict()
    unet = diffusers.UNet2DConditionModel.from_pretrained(
        folder / "unet", torch_dtype=torch.float32
    )
    state_dicts["unet"] = unet.state_dict()
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    state_dicts["vae"] = vae.state_dict()
    return source.family, state_dicts, source.configs


def write_single_file(
    folder: str | os.PathLike, out_file: str | os.PathLike, metadata: Mapping[str, str]
) -> Path:
    """Write ``folder``'s weights to ``out_file`` (.safetensors or .ckpt), atomically."""
    out_file = Path(out_file)
    if out_file.suffix not in SUFFIXES:
        raise InputError(
            f"single-file output {str(out_file)!r} must end in {' or '.join(SUFFIXES)}"
        )
    family, state_dicts, configs = component_state_dicts(Path(folder))
    checkpoint = {
        k: v.contiguous() for k, v in pipeline_to_ldm(family, state_dicts, configs).items()
    }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{out_file.name}.", dir=out_file.parent)
    os.close(handle)
    try:
        if out_file.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(checkpoint, partial, metadata=dict(metadata))
        else:
            import torch

            torch.save({"state_dict": checkpoint, "sdrt": dict(metadata)}, partial)
        with_umask_mode(partial)  # mkstemp's file is private (0o600)
        os.replace(partial, out_file)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return out_file


def init_random_single_file(
    arch: str, out_file: str | os.PathLike, *, seed: int = 0, force: bool = False, progress=None
) -> Path:
    """``sdrt init-model ARCH --random-weights OUT --single-file``: a random model, one file."""
    from sdrt.export.random_model import init_random_model

    out_file = Path(out_file)
    if out_file.exists() and not force:
        raise InputError(f"output {str(out_file)!r} exists; pass --force to replace it")
    if out_file.suffix not in SUFFIXES:
        raise InputError(
            f"single-file output {str(out_file)!r} must end in {' or '.join(SUFFIXES)}"
        )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_file.name}.", dir=out_file.parent) as tmp:
        folder = init_random_model(arch, Path(tmp) / "model", seed=seed, progress=progress)
        if progress:
            progress(f"writing {out_file} in the original (LDM) key layout")
        metadata = {TOKENIZER_KEY: LOCAL_TOKENIZER, ARCHITECTURE_KEY: arch, "sdrt.seed": str(seed)}
        return write_single_file(folder, out_file, metadata)
