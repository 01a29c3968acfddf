"""Textual inversion on a loaded Pipeline: new prompt encoders with the tokens added.

Each text encoder's prompt encoder is replaced as a whole (tokenizer with the added tokens,
the enlarged token-embedding table it feeds, an empty prompt cache), so a call already
running keeps the encoders it started with and no call sees half an update. Everything is
made and checked before anything is replaced: an error leaves the Pipeline as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdrt.adapters.textual_inversion import (
    Embedding,
    check_new_tokens,
    check_width,
    enlarged_table,
)
from sdrt.errors import InputError, ModelFolderError
from sdrt.manifest import Component, TokenEmbedding
from sdrt.prompts import PromptEncoder


def stored_table(folder: Path, token_embedding: TokenEmbedding) -> np.ndarray:
    """The built table, mapped read-only from the component's external data file."""
    path = folder / token_embedding.file
    dtype = np.dtype(token_embedding.dtype).newbyteorder("<")
    try:
        return np.memmap(
            path, dtype=dtype, mode="r", offset=token_embedding.offset, shape=token_embedding.shape
        )
    except (OSError, ValueError) as e:
        raise ModelFolderError(
            f"{folder}: cannot read the token-embedding table from {token_embedding.file} ({e})"
        ) from None


def _table_input(component: Component, encoder: PromptEncoder, folder: Path) -> TokenEmbedding:
    """The component's table input, checked to be one its session can be fed."""
    record = component.token_embedding
    if record is None:
        raise ModelFolderError(
            f"{folder}: its {component.name} graph takes no token-embedding table, so "
            "textual inversion cannot add tokens at run time; rebuild the folder with this "
            "sdrt (`sdrt build`), or add the embedding at build time (`sdrt build --embedding`)"
        )
    optional = {s.name for s in getattr(encoder.session, "optional_inputs", ())}
    if record.input not in optional:
        raise InputError(
            f"{component.name}: this backend's session cannot be fed the token-embedding table "
            "(textual inversion at run time runs on ort-cpu); add the embedding at build time "
            "with `sdrt build --embedding`"
        )
    return record


def with_embeddings(
    folder: Path,
    components: dict[str, Component],
    encoders: dict[str, PromptEncoder],
    embeddings: Sequence[Embedding],
) -> dict[str, PromptEncoder]:
    """New prompt encoders (by text encoder name) with ``embeddings`` added; the others are
    returned as they are. Raises InputError (naming the file) before anything changes."""
    unknown = sorted({e.encoder for e in embeddings} - set(encoders))
    if unknown:
        raise InputError(
            f"{embeddings[0].source}: an embedding for {unknown[0]}, which this model does not "
            f"have (its text encoders: {', '.join(encoders)})"
        )
    touched = {e.encoder for e in embeddings}
    check_new_tokens(embeddings, {n: encoders[n].tokenizer.vocabulary() for n in touched})
    result = dict(encoders)
    for name in touched:
        encoder = encoders[name]
        record = _table_input(components[name], encoder, folder)
        mine = [e for e in embeddings if e.encoder == name]
        for e in mine:
            check_width(e, record.shape[1], name)
        tokens = [t for e in mine for t in e.tokens()]
        tokenizer = encoder.tokenizer.with_added_tokens(tokens)
        ids = [tokenizer.token_to_id(t) for t in tokens]
        table = encoder.extra_feeds.get(record.input)
        if table is None:
            table = stored_table(folder, record)
        vectors = np.concatenate([e.vectors for e in mine], axis=0)
        result[name] = PromptEncoder(
            tokenizer,
            encoder.session,
            encoder.cache_size,
            hidden_output=encoder.hidden_output,
            pooled_output=encoder.pooled_output,
            extra_feeds={**encoder.extra_feeds, record.input: enlarged_table(table, ids, vectors)},
        )
    return result
