"""CLIP's byte-level BPE tokenizer through the `tokenizers` library, without transformers.

A model folder's ``tokenizer/`` holds either ``tokenizer.json`` or, as the Stable Diffusion
repositories on the Hub ship it, ``vocab.json`` + ``merges.txt``; ``tokenizer_config.json``
(and ``special_tokens_map.json``) name the special tokens and the context length. The ids
are those of transformers' ``CLIPTokenizer`` called as diffusers calls it:
``padding="max_length", max_length=77, truncation=True`` -> ``[bos] + text[:75] + [eos] + pad``.
The pad token matters: SD 1.x pads with ``<|endoftext|>``, SD 2.x and SDXL's second
tokenizer with ``!``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from sdrt.errors import InputError, ModelFolderError, SdrtWarning

DEFAULT_MAX_LENGTH = 77
# Configs without a real limit store a huge sentinel (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 1_000_000
# CLIP's pre-tokenizer split, as in openai/CLIP and transformers' CLIPTokenizer.
CLIP_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class PromptTruncatedWarning(SdrtWarning):
    """A prompt was longer than the text encoder's context and lost its tail."""


@dataclass(frozen=True)
class SpecialTokens:
    bos: str = "<|startoftext|>"
    eos: str = "<|endoftext|>"
    pad: str = "<|endoftext|>"
    unk: str = "<|endoftext|>"


def _token_text(value: Any, where: str) -> str | None:
    """Special tokens are stored as strings or as serialized AddedToken objects."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ModelFolderError(
        f"{where}: expected a token string or an object with 'content', got {value!r}"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_settings(folder: Path) -> tuple[SpecialTokens, int]:
    """Special tokens and max length from tokenizer_config.json, then special_tokens_map.json."""
    found: dict[str, str] = {}
    max_length = DEFAULT_MAX_LENGTH
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        data = _read_json(path)
        for key in ("bos", "eos", "pad", "unk"):
            text = _token_text(data.get(f"{key}_token"), f"{path}.{key}_token")
            if text is not None and key not in found:
                found[key] = text
        if name == "tokenizer_config.json" and "model_max_length" in data:
            value = data["model_max_length"]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 3:
                raise ModelFolderError(
                    f"{path}.model_max_length: expected an integer >= 3, got {value!r}"
                )
            if value < _NO_LIMIT:
                max_length = int(value)
    return SpecialTokens(**found), max_length


def clip_normalizer() -> normalizers.Normalizer:
    """CLIP's text clean-up: NFC, whitespace runs collapsed to one space, lower case."""
    return normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )


def clip_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """CLIP's words: split with CLIP_SPLIT_PATTERN, then GPT-2's byte-level characters."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )


def _bpe_from_vocab_and_merges(folder: Path, special: SpecialTokens) -> Tokenizer:
    """Rebuild CLIP's tokenizer pipeline around the Hub's vocab.json + merges.txt."""
    vocab = _read_json(folder / "vocab.json")
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ModelFolderError(
                f"{folder / 'merges.txt'}:{number}: expected two symbols, got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=special.unk,
        )
    )
    tokenizer.normalizer = clip_normalizer()
    tokenizer.pre_tokenizer = clip_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    # As transformers registers them: special tokens written in a prompt map to their ids.
    # One missing from the vocabulary would get an id the text encoder has no embedding
    # for; ClipTokenizer reports it instead.
    tokens = [
        t for t in dict.fromkeys([special.bos, special.eos, special.unk, special.pad]) if t in vocab
    ]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    _add_saved_tokens(tokenizer, folder)
    return tokenizer


def _add_saved_tokens(tokenizer: Tokenizer, folder: Path) -> None:
    """transformers' older files keep added tokens (textual inversion's) in added_tokens.json."""
    path = folder / "added_tokens.json"
    if not path.is_file():
        return
    saved = _read_json(path)
    for token, token_id in sorted(saved.items(), key=lambda item: item[1]):
        if tokenizer.token_to_id(token) is not None:
            continue  # a special token already registered
        tokenizer.add_tokens([token])
        if tokenizer.token_to_id(token) != token_id:
            raise ModelFolderError(
                f"{path}: token {token!r} has id {token_id}, expected the next free id "
                f"{tokenizer.token_to_id(token)}"
            )


class ClipTokenizer:
    """Prompts -> (batch, max_length) token ids, padded and truncated as diffusers does."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        special: SpecialTokens,
        max_length: int,
        where: str,
        added_tokens: tuple[str, ...] = (),
    ):
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.special = special
        self.where = where
        # Tokens added by textual inversion (as transformers' add_tokens adds them).
        self.added_tokens = added_tokens
        self._added = set(added_tokens)
        self.bos_id = self._id(special.bos, "bos", where)
        self.eos_id = self._id(special.eos, "eos", where)
        self.pad_id = self._id(special.pad, "pad", where)

    def _id(self, token: str, role: str, where: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ModelFolderError(f"{where}: the {role} token {token!r} is not in the vocabulary")
        return token_id

    @classmethod
    def from_folder(cls, folder: str | Path) -> ClipTokenizer:
        folder = Path(folder)
        special, max_length = _read_settings(folder)
        if (folder / "tokenizer.json").is_file():
            try:
                tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as e:  # the Rust parser raises a bare Exception on bad files
                raise ModelFolderError(
                    f"{folder / 'tokenizer.json'}: cannot be read ({e})"
                ) from None
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tokenizer = _bpe_from_vocab_and_merges(folder, special)
        else:
            raise ModelFolderError(
                f"{folder}: expected tokenizer.json, or vocab.json and merges.txt; found neither"
            )
        # Padding and truncation are done here, explicitly, not by the file's settings.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        # Non-special added tokens are textual-inversion tokens (sdrt build --embedding).
        added = tokenizer.get_added_tokens_decoder()
        textual = tuple(added[i].content for i in sorted(added) if not added[i].special)
        return cls(tokenizer, special, max_length, str(folder), textual)

    def vocabulary(self) -> set[str]:
        """Every token the tokenizer knows, added ones included (transformers' get_vocab)."""
        return set(self._tokenizer.get_vocab(with_added_tokens=True))

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def with_added_tokens(self, tokens: list[str]) -> ClipTokenizer:
        """A copy with ``tokens`` added as transformers' ``CLIPTokenizer.add_tokens`` adds
        them (normalized, not special: matched in the lower-cased text), ids in order after
        the vocabulary; this tokenizer is unchanged."""
        copy = Tokenizer.from_str(self._tokenizer.to_str())
        copy.add_tokens(list(tokens))
        return ClipTokenizer(
            copy, self.special, self.max_length, self.where, self.added_tokens + tuple(tokens)
        )

    def convert_prompt(self, prompt: str) -> str:
        """diffusers' ``maybe_convert_prompt``: a multi-vector token named in ``prompt`` is
        expanded to all its tokens (``<cat>`` -> ``<cat> <cat>_1``)."""
        if not self._added:
            return prompt
        from sdrt.adapters.textual_inversion import convert_prompt

        tokens = self._tokenizer.encode(prompt, add_special_tokens=False).tokens
        return convert_prompt(prompt, tokens, self._added)

    def text_ids(self, prompt: str) -> list[int]:
        """The prompt's ids without special tokens, untruncated."""
        return self._tokenizer.encode(prompt, add_special_tokens=False).ids

    def _dropped_text(self, ids: list[int], limit: int = 60) -> str:
        """What truncation cut off, as text (CLIP marks word ends with ``</w>``), shortened
        to ``limit`` characters for a one-line warning."""
        text = " ".join(self._tokenizer.decode(ids).replace("</w>", " ").split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def __call__(self, prompts: str | list[str]) -> np.ndarray:
        """Token ids as int64, shape (len(prompts), max_length); warns when a prompt is cut."""
        if isinstance(prompts, str):
            prompts = [prompts]
        room = self.max_length - 2  # bos and eos
        rows = []
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise InputError(f"prompt: expected a string, got {type(prompt).__name__}")
            ids = self.text_ids(self.convert_prompt(prompt))
            if len(ids) > room:
                dropped = len(ids) - room
                warnings.warn(
                    f"prompt truncated to the text encoder's {self.max_length} tokens: "
                    f"{dropped} token{'s' if dropped != 1 else ''} dropped "
                    f"(at most {room} tokens of text fit): {self._dropped_text(ids[room:])!r}",
                    PromptTruncatedWarning,
                    stacklevel=2,
                )
                ids = ids[:room]
            row = [self.bos_id, *ids, self.eos_id]
            rows.append(row + [self.pad_id] * (self.max_length - len(row)))
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), self.max_length)
