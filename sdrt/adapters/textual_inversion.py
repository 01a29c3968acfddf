"""Textual inversion as diffusers' ``load_textual_inversion`` means it, on numpy.

A file holds one learned embedding per token: diffusers' ``learned_embeds`` (one key, the
token, -> a (width,) or (vectors, width) tensor), A1111's (``string_to_param["*"]`` and its
``name``), a bare tensor (the token must be given), or SDXL's pair ``clip_l`` / ``clip_g``
(one embedding per text encoder; diffusers needs two calls for it, sdrt takes the file).
An embedding of N vectors becomes the tokens ``token``, ``token_1``, ... ``token_{N-1}``,
and a prompt naming ``token`` is expanded to name them all (``convert_prompt``, diffusers'
``_maybe_convert_prompt``). Files are read by sdrt.adapters.tensor_files: no torch, no
arbitrary unpickling.

The text encoder graph takes its token-embedding table as an optional input (sdrt.json's
``token_embedding`` of the component); ``enlarged_table`` makes the table with the new
tokens' rows, fed only while embeddings are loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.adapters.tensor_files import read_tensor_file
from sdrt.errors import InputError

# The name the text encoder graph's token-embedding table has as an optional input.
TOKEN_EMBEDDING_INPUT = "token_embedding"
# diffusers' file names in a folder, in the order it tries them.
WEIGHT_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
# CLIP's BPE marks a word's last symbol; "fox</w>" is the whole word "fox".
END_OF_WORD = "</w>"
# SDXL embeddings (A1111/kohya): one tensor per text encoder.
SDXL_KEYS = {"clip_l": "text_encoder", "clip_g": "text_encoder_2"}


@dataclass(frozen=True)
class Embedding:
    """One learned embedding for one text encoder: its token and vectors (vectors, width)."""

    token: str
    vectors: np.ndarray
    encoder: str  # "text_encoder" or "text_encoder_2"
    source: str  # the file it came from (for messages), or "<array>"

    def tokens(self) -> tuple[str, ...]:
        """diffusers' multi-vector expansion: ``token``, ``token_1``, ..."""
        return (self.token,) + tuple(f"{self.token}_{i}" for i in range(1, len(self.vectors)))


def embedding_file(path: str | os.PathLike, weight_name: str | None = None) -> Path:
    """The file to read: ``path`` itself, or diffusers' file name inside a folder."""
    path = Path(path)
    if path.is_dir():
        names = (weight_name,) if weight_name else WEIGHT_NAMES
        for name in names:
            if (path / name).is_file():
                return path / name
        raise InputError(f"{path}: a folder without {' or '.join(names)}")
    return path


def read_embeddings(
    source: str | os.PathLike | Mapping | np.ndarray,
    token: str | None = None,
    *,
    encoder: str = "text_encoder",
    weight_name: str | None = None,
) -> list[Embedding]:
    """The embeddings a file (or a loaded state dict / array) holds, as diffusers reads them:
    one, or SDXL's two (one per encoder). ``token`` overrides the file's own; ``encoder`` is
    the text encoder a single embedding is for."""
    if isinstance(source, (Mapping, np.ndarray)):
        where, content = "<state dict>", source
    else:
        path = embedding_file(source, weight_name)
        where, content = str(path), read_tensor_file(path)
    if isinstance(content, Mapping) and set(content) == set(SDXL_KEYS):
        if token is None:
            raise InputError(
                f"{where}: an SDXL embedding (clip_l and clip_g) names no token; pass token= "
                "(on the command line FILE:TOKEN)"
            )
        return [
            Embedding(token, _vectors(content[key], where, key), SDXL_KEYS[key], where)
            for key in SDXL_KEYS
        ]
    loaded_token, value = _token_and_tensor(content, token, where)
    return [Embedding(token or loaded_token, _vectors(value, where, loaded_token), encoder, where)]


def _token_and_tensor(content: Any, token: str | None, where: str) -> tuple[str, Any]:
    """diffusers' ``_retrieve_tokens_and_embeddings`` for one state dict."""
    if isinstance(content, np.ndarray):
        if token is None:
            raise InputError(
                f"{where}: holds a bare tensor, which names no token; pass token= "
                "(on the command line FILE:TOKEN)"
            )
        return token, content
    if isinstance(content, Mapping) and len(content) == 1:  # diffusers
        ((loaded, value),) = content.items()
        return str(loaded), value
    if isinstance(content, Mapping) and "string_to_param" in content:  # A1111
        params = content["string_to_param"]
        if not isinstance(params, Mapping) or "*" not in params:
            raise InputError(f"{where}: an A1111 embedding without string_to_param['*']")
        return str(content.get("name", token or "")), params["*"]
    keys = sorted(map(str, content)) if isinstance(content, Mapping) else type(content).__name__
    raise InputError(
        f"{where}: not a textual-inversion embedding: expected one key (diffusers' "
        f"learned_embeds), string_to_param (A1111) or clip_l and clip_g (SDXL), got {keys}"
    )


def _vectors(value: Any, where: str, key: str) -> np.ndarray:
    """(vectors, width) float32: diffusers reads (width,) and (1, width) as one vector."""
    if not isinstance(value, np.ndarray) or value.ndim not in (1, 2) or value.size == 0:
        got = getattr(value, "shape", type(value).__name__)
        raise InputError(
            f"{where}: {key!r} is not an embedding: expected a tensor of shape (width,) or "
            f"(vectors, width), got {got}"
        )
    vectors = value.astype(np.float32).reshape(-1, value.shape[-1])
    if not np.isfinite(vectors).all():
        raise InputError(f"{where}: {key!r} holds NaN or Inf")
    return vectors


def check_new_tokens(embeddings: Sequence[Embedding], vocabulary: Mapping[str, set[str]]) -> None:
    """diffusers' checks, per text encoder: no token given twice, none already known
    (``vocabulary``: encoder -> its tokenizer's tokens, added ones included); and one more
    than diffusers makes: no token that is a whole word of the vocabulary (``fox</w>``),
    which the added token would silently replace in every prompt."""
    for encoder, known in vocabulary.items():
        mine = [e for e in embeddings if e.encoder == encoder]
        names = [e.token for e in mine]
        if len(set(names)) < len(names):
            raise InputError(f"You have passed a list of tokens that contains duplicates: {names}")
        for e in mine:
            if e.token in known:
                raise InputError(
                    f"{e.source}: Token {e.token} already in tokenizer vocabulary. Please choose "
                    f"a different token name or remove {e.token} and embedding from the "
                    "tokenizer and text encoder."
                )
            word = f"{e.token.lower()}{END_OF_WORD}"  # added tokens match lower-cased text
            if word in known:
                raise InputError(
                    f"{e.source}: Token {e.token} is a word of the tokenizer vocabulary "
                    f"({word!r}): the embedding would replace it in every prompt. Please "
                    f"choose a token that is not a word, such as '<{e.token}>'."
                )
            if f"{e.token}_1" in known:
                taken = [t for t in known if t == e.token or t.startswith(f"{e.token}_")]
                raise InputError(
                    f"{e.source}: Multi-vector Token {sorted(taken)} already in tokenizer "
                    "vocabulary. Please choose a different token name or remove the "
                    f"{sorted(taken)} and embedding from the tokenizer and text encoder."
                )


def check_width(embedding: Embedding, width: int, encoder_name: str) -> None:
    got = embedding.vectors.shape[-1]
    if got != width:
        raise InputError(
            f"{embedding.source}: the embedding for {embedding.token!r} has vectors of width "
            f"{got}; this model's {encoder_name} expects {width} (an embedding made for "
            "another model family)"
        )


def convert_prompt(prompt: str, tokens: Sequence[str], added: set[str]) -> str:
    """diffusers' ``_maybe_convert_prompt``: ``tokens`` are the prompt's tokens, ``added``
    the tokenizer's added tokens; a token with ``token_1``, ... added is replaced, as text,
    by all of them. Tokens are taken in order of first appearance (diffusers iterates a
    set, whose order only matters where one token's text holds another's)."""
    for token in dict.fromkeys(tokens):
        if token in added:
            replacement = token
            i = 1
            while f"{token}_{i}" in added:
                replacement += f" {token}_{i}"
                i += 1
            prompt = prompt.replace(token, replacement)
    return prompt


def enlarged_table(table: np.ndarray, ids: Sequence[int], vectors: np.ndarray) -> np.ndarray:
    """A copy of the token-embedding ``table`` with ``vectors`` as the rows of ``ids`` (rows
    added where an id is past its end), in the table's dtype."""
    rows = max(len(table), max(ids) + 1)
    out = np.empty((rows, table.shape[1]), dtype=table.dtype)
    out[: len(table)] = table
    out[len(table) :] = 0
    out[np.asarray(ids)] = vectors.astype(table.dtype)
    return out


def read_textual_inversions(
    paths: str | os.PathLike | Mapping | np.ndarray | Sequence,
    tokens: str | Sequence[str | None] | None = None,
    *,
    encoder: str = "text_encoder",
    weight_name: str | None = None,
) -> list[Embedding]:
    """``load_textual_inversion``'s arguments as diffusers takes them (one source or a list,
    one token or a list of as many) -> the embeddings, read and checked."""
    sources = list(paths) if isinstance(paths, (list, tuple)) else [paths]
    names = list(tokens) if isinstance(tokens, (list, tuple)) else [tokens]
    if names[0] is None:
        names = names * len(sources)
    if len(sources) == 1 and len(names) > 1:
        return _one_tensor_many_tokens(sources[0], names, encoder, weight_name)
    if len(sources) != len(names):
        raise InputError(
            f"You have passed a list of models of length {len(sources)}, and list of tokens of "
            f"length {len(names)}. Make sure both lists have the same length."
        )
    given = [t for t in names if t is not None]
    if len(set(given)) < len(given):
        raise InputError(f"You have passed a list of tokens that contains duplicates: {names}")
    embeddings = []
    for source, token in zip(sources, names, strict=True):
        embeddings += read_embeddings(source, token, encoder=encoder, weight_name=weight_name)
    return embeddings


def _one_tensor_many_tokens(
    source, names: list, encoder: str, weight_name: str | None
) -> list[Embedding]:
    """diffusers' special case: one bare (n, width) tensor and n tokens, a row each."""
    if isinstance(source, np.ndarray):
        where, content = "<array>", source
    else:
        path = embedding_file(source, weight_name)
        where, content = str(path), read_tensor_file(path)
    if not isinstance(content, np.ndarray) or content.ndim != 2 or len(content) != len(names):
        got = getattr(content, "shape", type(content).__name__)
        raise InputError(
            f"{where}: {len(names)} tokens for one file need a bare tensor of {len(names)} "
            f"rows (one embedding each), got {got}"
        )
    if any(t is None for t in names):
        raise InputError(f"{where}: expected a token for every row, got {names}")
    return [
        Embedding(token, _vectors(row, where, token), encoder, where)
        for token, row in zip(names, content, strict=True)
    ]
