"""``sdrt build --lora FILE[:SCALE] --embedding FILE[:TOKEN]``: adapters applied to the source.

The source pipeline is loaded in diffusers, each LoRA loaded (``load_lora_weights``) as
its own adapter, all of them activated at their scales (``set_adapters``) and fused in one
``fuse_lora``, each embedding added
(``load_textual_inversion``), and the changed components (U-Net, text encoders, tokenizers)
saved into a scratch folder inside the build's staging folder, beside links to the
unchanged rest. The build then exports and verifies from that folder, so its ONNX-vs-eager
check compares against diffusers with the same adapters applied, and an error leaves
nothing in the output. Embedding files are read by sdrt.adapters (no torch unpickling).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sdrt.export.source import SourceModel, inspect_folder

from sdrt.adapters.options import EmbeddingOption, LoraOption
from sdrt.adapters.textual_inversion import check_new_tokens, check_width, read_embeddings
from sdrt.errors import InputError
from sdrt.manifest import BuiltAdapter, sha256_file

SOURCE_FOLDER = "source"


def apply_adapters(
    source: SourceModel,
    loras: Sequence[LoraOption],
    embeddings: Sequence[EmbeddingOption],
    scratch: Path,
) -> tuple[SourceModel, tuple[BuiltAdapter, ...]]:
    """The source with the adapters applied (written under ``scratch``), and their records."""
    import torch

    pipe = _load_pipeline(source)
    records = _fuse_loras(pipe, loras)
    records += [_add_embedding(pipe, option, torch) for option in embeddings]
    changed = set(source.text_encoders)
    if loras:
        changed.add("unet")
    if embeddings:
        changed.update(source.tokenizers)
    folder = scratch / SOURCE_FOLDER
    folder.mkdir(parents=True)
    for entry in source.folder.iterdir():
        if entry.name not in changed:
            os.symlink(entry, folder / entry.name)
    for name in sorted(changed):
        getattr(pipe, name).save_pretrained(folder / name)
    del pipe
    return inspect_folder(folder, source.path_or_id, source.revision), tuple(records)


def _load_pipeline(source: SourceModel):
    import diffusers
    import torch

    cls = getattr(diffusers, source.pipeline_class)
    extra = {}
    if "safety_checker" in source.model_index:  # not needed to export; not loaded
        extra = {"safety_checker": None, "requires_safety_checker": False}
    return cls.from_pretrained(source.folder, torch_dtype=torch.float32, **extra)


def _fuse_loras(pipe, loras: Sequence[LoraOption]) -> list[BuiltAdapter]:
    """Fuse the LoRAs as diffusers' ``set_adapters(names, scales)`` applies them together.

    In one step: a ``load_lora_weights`` after a ``fuse_lora`` restores the base weights
    (diffusers/peft), so fusing one file at a time would keep only the last."""
    if not loras:
        return []
    names = [_load_lora(pipe, lora, f"build_lora_{i}") for i, lora in enumerate(loras)]
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
    pipe.fuse_lora(lora_scale=1.0, adapter_names=names)  # the scales are set_adapters'
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    return [
        BuiltAdapter("lora", str(lora.path), sha256_file(lora.path), scale=lora.scale)
        for lora in loras
    ]


def _load_lora(pipe, option: LoraOption, name: str) -> str:
    try:
        pipe.load_lora_weights(str(option.path), adapter_name=name)
    except Exception as e:  # diffusers and peft raise many kinds for files they cannot use
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise InputError(
            f"--lora {option.path}: diffusers cannot load it as a LoRA for this model "
            f"({type(e).__name__}: {first})"
        ) from None
    touched = [c for c, names in pipe.get_list_adapters().items() if name in names]
    if not touched:
        raise InputError(
            f"--lora {option.path}: none of its keys match this model's layers "
            "(a LoRA for another architecture?)"
        )
    return name


def _add_embedding(pipe, option: EmbeddingOption, torch) -> BuiltAdapter:
    tokens: list[str] = []
    for embedding in read_embeddings(option.path, option.token):
        suffix = embedding.encoder[len("text_encoder") :]
        encoder = getattr(pipe, embedding.encoder, None)
        if encoder is None:
            raise InputError(
                f"--embedding {option.path}: an embedding for {embedding.encoder}, which this "
                "model does not have"
            )
        check_width(embedding, encoder.get_input_embeddings().weight.shape[-1], embedding.encoder)
        tokenizer = getattr(pipe, f"tokenizer{suffix}")
        # sdrt's checks, as at run time: diffusers' below would let a vocabulary word through
        check_new_tokens([embedding], {embedding.encoder: set(tokenizer.get_vocab())})
        try:
            pipe.load_textual_inversion(
                torch.from_numpy(embedding.vectors.copy()),
                token=embedding.token,
                text_encoder=encoder,
                tokenizer=tokenizer,
            )
        except ValueError as e:  # diffusers' checks: a token already in the vocabulary
            raise InputError(f"--embedding {option.path}: {e}") from None
        tokens += [t for t in embedding.tokens() if t not in tokens]
    return BuiltAdapter(
        "textual_inversion", str(option.path), sha256_file(option.path), tokens=tuple(tokens)
    )
