"""A CLIP-compatible byte-level BPE tokenizer, learned locally from a small English corpus.

No tokenizer can be downloaded here, so the random-weight models carry one made on the spot.
It follows CLIP's conventions exactly, so that transformers' ``CLIPTokenizer`` and our runtime
load it from ``vocab.json`` + ``merges.txt`` as they load the Hub's SD tokenizers:

- text is NFC-normalised, whitespace collapsed and lower-cased, then split with CLIP's regex
  and mapped to byte-level unicode characters (GPT-2's ``bytes_to_unicode``), by the runtime's
  own normaliser and pre-tokenizer (sdrt/tokenizer.py);
- the last symbol of each word carries the ``</w>`` end-of-word suffix;
- the vocabulary lists the 256 byte characters, the same with ``</w>``, one token per merge,
  then ``<|startoftext|>`` and ``<|endoftext|>`` last, so that ``<|endoftext|>`` has the highest
  id (CLIP's pooled output takes the position of the highest id when ``eos_token_id`` is 2).

Merges are learned greedily (most frequent adjacent pair first, ties broken by the pair's text)
so the result is deterministic and does not depend on the ``tokenizers`` version.
"""

from __future__ import annotations

import collections
import json
from importlib import resources
from pathlib import Path

from sdrt.tokenizer import clip_normalizer, clip_pre_tokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77
# A merge must be seen at least this often in the corpus to be learned.
MIN_PAIR_COUNT = 2
DEFAULT_MAX_MERGES = 4000


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters, in CLIP's order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def builtin_corpus() -> str:
    """The small English corpus of image-prompt-like sentences shipped with sdrt.export."""
    return resources.files("sdrt.export").joinpath("data/bpe_corpus.txt").read_text("utf-8")


def _words(text: str) -> collections.Counter[tuple[str, ...]]:
    """Word frequencies, each word as byte-level symbols with ``</w>`` on the last one."""
    normalizer = clip_normalizer()
    pre_tokenizer = clip_pre_tokenizer()
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
        counts[(*word[:-1], word[-1] + END_OF_WORD)] += 1
    return counts


def _merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def learn_merges(text: str, max_merges: int = DEFAULT_MAX_MERGES) -> list[tuple[str, str]]:
    """Greedy BPE merge learning: repeatedly merge the most frequent adjacent symbol pair."""
    words = _words(text)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        # Highest count first; among equal counts the smallest pair text, for determinism.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < MIN_PAIR_COUNT:
            break
        merges.append(best)
        words = collections.Counter({_merge_pair(w, best): c for w, c in words.items()})
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes + ``</w>``, merged tokens, then the two specials."""
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + END_OF_WORD for s in byte_symbols]
    seen = set(tokens)
    for a, b in merges:
        # Two different merges can spell the same token; it gets one id.
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def _special_tokens(pad_token: str) -> dict[str, str]:
    return {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
    }


def write_tokenizer_folder(
    folder: Path,
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    *,
    pad_token: str,
) -> None:
    """Write the four files the Hub's SD repos ship in ``tokenizer/``.

    SD 1.x pads with ``<|endoftext|>``; SD 2.x and SDXL's ``tokenizer_2`` pad with ``!``.
    """
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    special = _special_tokens(pad_token)
    config = {
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "CLIPTokenizer",
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
