"""sdrt's CLIP tokenizer gives the ids of transformers' CLIPTokenizer, from either file form."""

from __future__ import annotations

import collections
import json
import warnings
from pathlib import Path

import pytest

from sdrt.errors import ModelFolderError
from sdrt.tokenizer import ClipTokenizer, PromptTruncatedWarning

CORPUS = (
    "a photograph of an astronaut riding a horse on the moon, highly detailed, 4k. "
    "a red fox in the snow at sunset; oil painting by a famous painter. "
    "the quick brown fox jumps over the lazy dog again and again and again"
)
NUM_MERGES = 120

PROMPTS = [
    "a red fox in snow",
    "A Red FOX in Snow!!",
    "an astronaut's horse, riding... on the MOON?! (4k, 8k) #art",
    "   spaces\tand\nnewlines   everywhere  ",
    "Café crème brûlée — naïve façade, 東京タワー, emoji 🦊🔥",
    "numbers 12345 and 3.14159 and 1e10",
    "",
    "don't won't it's we're they've I'm you'll he'd",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "fox " * 100,
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def write_clip_vocab(folder: Path, *, pad_token: str = "<|endoftext|>") -> Path:
    """A small but complete CLIP vocabulary: every byte, merges learned on CORPUS, specials."""
    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    words = collections.Counter()
    for word in CORPUS.lower().split():
        symbols = [_bytes_to_unicode()[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        words[tuple(symbols)] += 1
    merges = []
    for _ in range(NUM_MERGES):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": {"content": pad_token, "__type": "AddedToken"},
            }
        )
    )
    return folder


def _reference_ids(folder: Path, prompts: list[str]) -> list[list[int]]:
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(str(folder))
    return reference(prompts, padding="max_length", max_length=77, truncation=True).input_ids


@pytest.fixture(scope="module", params=["<|endoftext|>", "!"], ids=["sd1-pad", "sd2-pad"])
def vocab_folder(tmp_path_factory, request) -> Path:
    return write_clip_vocab(tmp_path_factory.mktemp("tok"), pad_token=request.param)


def test_vocab_and_merges_match_transformers(vocab_folder):
    ours = ClipTokenizer.from_folder(vocab_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ids = ours(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77)
    assert ids.tolist() == _reference_ids(vocab_folder, PROMPTS)


def test_tokenizer_json_matches_transformers(vocab_folder, tmp_path):
    from transformers import CLIPTokenizer

    CLIPTokenizer.from_pretrained(str(vocab_folder)).save_pretrained(str(tmp_path))
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).unlink(missing_ok=True)
    assert (tmp_path / "tokenizer.json").is_file()
    ours = ClipTokenizer.from_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ids = ours(PROMPTS)
    assert ids.tolist() == _reference_ids(vocab_folder, PROMPTS)


def test_pad_token_comes_from_the_config(vocab_folder):
    ours = ClipTokenizer.from_folder(vocab_folder)
    ids = ours("fox")
    assert ids[0, -1] == ours.pad_id
    assert ours.pad_id == ours._tokenizer.token_to_id(ours.special.pad)
    if ours.special.pad == "!":
        assert ours.pad_id != ours.eos_id


def test_long_prompt_warns_with_the_number_of_dropped_tokens(vocab_folder):
    ours = ClipTokenizer.from_folder(vocab_folder)
    prompt = "fox " * 100  # "fox</w>" is one token after the merges
    assert len(ours.text_ids(prompt)) == 100
    with pytest.warns(PromptTruncatedWarning, match="25 tokens dropped"):
        ids = ours(prompt)
    assert ids[0, -1] == ours.eos_id


def test_short_prompt_does_not_warn(vocab_folder):
    ours = ClipTokenizer.from_folder(vocab_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours("fox " * 75)


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(
        ModelFolderError, match="expected tokenizer.json, or vocab.json and merges.txt"
    ):
        ClipTokenizer.from_folder(tmp_path)


def test_pad_token_missing_from_vocabulary(tmp_path):
    folder = write_clip_vocab(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["pad_token"] = "<|pad|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelFolderError, match=r"the pad token '<\|pad\|>' is not in the vocabulary"
    ):
        ClipTokenizer.from_folder(folder)


def test_random_model_tokenizer_matches_transformers(tiny_source, tmp_path):
    """The project's own locally learned CLIP vocabulary, in both file forms."""
    from transformers import CLIPTokenizer

    folder = tiny_source / "tokenizer"
    ours = ClipTokenizer.from_folder(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ids = ours(PROMPTS)
    assert ids.tolist() == _reference_ids(folder, PROMPTS)
    CLIPTokenizer.from_pretrained(str(folder)).save_pretrained(str(tmp_path))
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).unlink(missing_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        assert ClipTokenizer.from_folder(tmp_path)(PROMPTS).tolist() == ids.tolist()
