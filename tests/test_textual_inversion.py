"""Textual inversion at run time: Pipeline.load_textual_inversion against diffusers'.

Random embeddings are made here in each format people share (diffusers' learned_embeds as
safetensors and as a torch .bin, A1111's string_to_param .pt), loaded into the tiny built
folder by sdrt and into its source pipeline by diffusers, and the images compared.
"""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest

import sdrt
from sdrt.adapters.tensor_files import read_tensor_file
from sdrt.adapters.textual_inversion import convert_prompt
from sdrt.errors import InputError
from sdrt.tokenizer import ClipTokenizer

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

# The bound for images in [0, 1]; float32 on both sides measures ~1e-6.
MAX_IMAGE_DIFF = 2 / 255
# A token's embedding must move the image by more than this, or the test proves nothing.
MIN_TOKEN_EFFECT = 1e-2
# The same call twice on one pipeline: the same image but for kernel threading's rounding.
SAME_IMAGE = 1e-6
STEPS = 3
WIDTH = 32  # the tiny text encoder's hidden size
PROMPTS_WITH_TOKENS = [
    "a <cat> photo",
    "a<cat>photo of <cat>",
    "<CAT> in the snow",
    "a <cat>_1 alone",
    "<cat><cat> and <dog>",
    "no token here",
]


def _vectors(count: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, WIDTH)) * 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    two = _vectors(2, 1)
    safetensors_torch.save_file({"<cat>": torch.from_numpy(two)}, folder / "cat.safetensors")
    torch.save({"<cat>": torch.from_numpy(two)}, folder / "cat.bin")
    one = _vectors(1, 2)
    a1111 = {
        "string_to_token": {"*": torch.tensor(265)},
        "string_to_param": {"*": torch.nn.Parameter(torch.from_numpy(one))},
        "name": "<dog>",
        "step": 100,
        "sd_checkpoint": "abcdef",
        "sd_checkpoint_name": "tiny",
    }
    torch.save(a1111, folder / "dog.pt")
    return {
        "two": two,
        "one": one,
        "cat": folder / "cat.safetensors",
        "cat_bin": folder / "cat.bin",
        "dog": folder / "dog.pt",
        "folder": folder,
    }


def _reference(tiny_source):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_source), safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 4, 8, 8), dtype=np.float32)


def _ours(pipe, prompt: str, negative: str | None = None) -> np.ndarray:
    return pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=STEPS,
        latents=_latents(),
        scheduler="EulerDiscreteScheduler",
        output_type="np",
    ).images


def _theirs(pipe, prompt: str, negative: str | None = None) -> np.ndarray:
    return pipe(
        prompt,
        negative_prompt=negative,
        num_inference_steps=STEPS,
        latents=torch.from_numpy(_latents()),
        height=64,
        width=64,
        output_type="np",
    ).images


@pytest.mark.parametrize("kind", ["cat", "cat_bin"])
def test_two_vector_embedding_matches_diffusers(tiny_built, tiny_source, files, kind):
    ours = sdrt.Pipeline.load(tiny_built)
    ours.load_textual_inversion(files[kind])
    theirs = _reference(tiny_source)
    theirs.load_textual_inversion(str(files[kind]))
    for prompt, negative in [("a <cat> photo", None), ("a photo", "<cat>, blurry")]:
        diff = np.abs(_ours(ours, prompt, negative) - _theirs(theirs, prompt, negative)).max()
        assert diff <= MAX_IMAGE_DIFF, (prompt, diff)
    plain = sdrt.Pipeline.load(tiny_built)
    effect = np.abs(_ours(ours, "a <cat> photo") - _ours(plain, "a <cat> photo")).max()
    assert effect > MIN_TOKEN_EFFECT


def test_a1111_embedding_and_a_second_file_match_diffusers(tiny_built, tiny_source, files):
    ours = sdrt.Pipeline.load(tiny_built)
    ours.load_textual_inversion(files["dog"])
    ours.load_textual_inversion(files["cat"], token="<kitty>")  # the file's token overridden
    theirs = _reference(tiny_source)
    theirs.load_textual_inversion(str(files["dog"]))
    theirs.load_textual_inversion(str(files["cat"]), token="<kitty>")
    prompt = "a <dog> and a <kitty>"
    diff = np.abs(_ours(ours, prompt) - _theirs(theirs, prompt)).max()
    assert diff <= MAX_IMAGE_DIFF
    assert ours.prompt_encoder.tokenizer.added_tokens == ("<dog>", "<kitty>", "<kitty>_1")


def test_added_tokens_and_prompt_expansion_match_transformers(tiny_source):
    theirs = transformers.CLIPTokenizer.from_pretrained(str(tiny_source / "tokenizer"))
    pipe = diffusers.StableDiffusionPipeline  # its _maybe_convert_prompt, unbound
    added = ["<cat>", "<cat>_1", "<dog>", "Sks"]
    for token in added:
        theirs.add_tokens(token)
    ours = ClipTokenizer.from_folder(tiny_source / "tokenizer").with_added_tokens(added)
    for prompt in [*PROMPTS_WITH_TOKENS, "sks dog Sks"]:
        expected = pipe._maybe_convert_prompt(None, prompt, theirs)
        assert ours.convert_prompt(prompt) == expected, prompt
        want = theirs(expected, padding="max_length", max_length=77, truncation=True).input_ids
        assert ours([prompt])[0].tolist() == want, prompt
    assert ours.convert_prompt("a <cat> b") == "a <cat> <cat>_1 b"


def test_convert_prompt_expands_every_vector():
    added = {"<x>", "<x>_1", "<x>_2", "<y>"}
    assert convert_prompt("<x> and <y>", ["<x>", "and</w>", "<y>"], added) == (
        "<x> <x>_1 <x>_2 and <y>"
    )
    assert convert_prompt("plain", ["plain</w>"], added) == "plain"


def test_token_already_in_vocabulary_is_refused(tiny_built, files):
    pipe = sdrt.Pipeline.load(tiny_built)
    before = pipe.prompt_encoders
    with pytest.raises(InputError, match="Token photo</w> already in tokenizer vocabulary"):
        pipe.load_textual_inversion(files["cat"], token="photo</w>")
    # "tree</w>" is a word of the tiny vocabulary (diffusers lets "tree" through): an
    # embedding under that token would replace the word in every prompt.
    for word in ("tree", "Tree"):
        with pytest.raises(InputError, match=f"Token {word} is a word of the tokenizer vocabulary"):
            pipe.load_textual_inversion(files["cat"], token=word)
    assert pipe.prompt_encoders is before
    pipe.load_textual_inversion(files["cat"])
    after_first = pipe.prompt_encoders
    with pytest.raises(InputError, match=r"Token <cat> already in tokenizer vocabulary"):
        pipe.load_textual_inversion(files["cat_bin"])
    with pytest.raises(InputError, match="contains duplicates"):
        pipe.load_textual_inversion([files["dog"], files["cat"]], token=["<z>", "<z>"])
    assert before is not after_first and pipe.prompt_encoders is after_first


def test_bad_files_name_the_file_and_change_nothing(tiny_built, files, tmp_path):
    pipe = sdrt.Pipeline.load(tiny_built)
    before = pipe.prompt_encoders
    wide = tmp_path / "wide.safetensors"
    safetensors_torch.save_file({"<w>": torch.zeros(1, 768)}, wide)
    with pytest.raises(InputError, match=r"wide\.safetensors.*width 768.*expects 32"):
        pipe.load_textual_inversion(wide)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(files["cat"].read_bytes()[:-10])
    with pytest.raises(InputError, match=r"corrupt\.safetensors.*truncated or corrupt"):
        pipe.load_textual_inversion(corrupt)
    unknown = tmp_path / "notes.bin"
    unknown.write_text("hello, not an embedding")
    with pytest.raises(InputError, match=r"notes\.bin: unknown format"):
        pipe.load_textual_inversion(unknown)
    two_keys = tmp_path / "two.safetensors"
    safetensors_torch.save_file({"a": torch.zeros(32), "b": torch.zeros(32)}, two_keys)
    with pytest.raises(InputError, match=r"two\.safetensors: not a textual-inversion"):
        pipe.load_textual_inversion(two_keys)
    bare = tmp_path / "bare.pt"
    torch.save(torch.zeros(2, 32), bare)
    with pytest.raises(InputError, match=r"bare\.pt: holds a bare tensor.*token="):
        pipe.load_textual_inversion(bare)
    with pytest.raises(InputError, match="no such file"):
        pipe.load_textual_inversion(tmp_path / "missing.safetensors")
    assert pipe.prompt_encoders is before
    pipe.load_textual_inversion(bare, token="<bare>")  # with a token it loads
    assert pipe.prompt_encoder.tokenizer.added_tokens == ("<bare>", "<bare>_1")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"<x>": _RunsCode()}, protocol=2))
    with pytest.raises(InputError, match=r"evil\.bin.*names (posix|os|nt)\.system"):
        read_tensor_file(path)


def test_torch_files_read_as_torch_reads_them(tmp_path):
    """Dtypes, a non-contiguous view, a shared storage and nesting come out as torch saved them."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    saved = {
        "t": base.t(),
        "half": base.half()[1:3],
        "bf16": base.to(torch.bfloat16)[:, 2],
        "ids": torch.tensor([3, 1, 2]),
        "nested": [{"x": base[2]}, "text", 7],
    }
    torch.save(saved, tmp_path / "many.pt")
    got = read_tensor_file(tmp_path / "many.pt")
    np.testing.assert_array_equal(got["t"], base.t().numpy())
    np.testing.assert_array_equal(got["half"], base.half()[1:3].numpy())
    np.testing.assert_array_equal(got["bf16"], base[:, 2].numpy())
    assert got["ids"].dtype == np.int64 and got["ids"].tolist() == [3, 1, 2]
    np.testing.assert_array_equal(got["nested"][0]["x"], base[2].numpy())
    assert got["nested"][1:] == ["text", 7]


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    path = tmp_path / "short.pt"
    torch.save({"x": torch.zeros(4), "s": torch.tensor(1.5)}, path)
    got = read_tensor_file(path)
    assert got["s"].shape == () and float(got["s"]) == 1.5
    with zipfile.ZipFile(path) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    storage = next(n for n in entries if "/data/" in n and len(entries[n]) == 16)
    entries[storage] = entries[storage][:8]  # the (4,) tensor's storage cut to 2 floats
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(InputError, match=r"short\.pt.*past its storage"):
        read_tensor_file(path)


def test_calls_in_flight_keep_the_tokens_they_started_with(tiny_built, files):
    """A load while other threads generate: each call's image is the one without the token
    or the one with it (prompt and negative prompt both name it), never a mix."""
    from concurrent.futures import ThreadPoolExecutor

    prompt, negative = "a <cat> photo", "<cat>, blurry"
    before = _ours(sdrt.Pipeline.load(tiny_built), prompt, negative)
    loaded = sdrt.Pipeline.load(tiny_built)
    loaded.load_textual_inversion(files["cat"])
    after = _ours(loaded, prompt, negative)
    pipe = sdrt.Pipeline.load(tiny_built)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(_ours, pipe, prompt, negative) for _ in range(6)]
        pipe.load_textual_inversion(files["cat"])
        futures += [pool.submit(_ours, pipe, prompt, negative) for _ in range(2)]
        images = [f.result() for f in futures]
    for image in images:
        assert min(np.abs(image - before).max(), np.abs(image - after).max()) <= SAME_IMAGE
    assert np.abs(images[-1] - after).max() <= SAME_IMAGE
    assert np.abs(before - after).max() > MIN_TOKEN_EFFECT


def test_one_tensor_with_a_token_per_row_matches_diffusers(tiny_built, tiny_source, tmp_path):
    rows = _vectors(2, 9)
    path = tmp_path / "rows.pt"
    torch.save(torch.from_numpy(rows), path)
    ours = sdrt.Pipeline.load(tiny_built)
    ours.load_textual_inversion(path, token=["<r1>", "<r2>"])
    assert ours.prompt_encoder.tokenizer.added_tokens == ("<r1>", "<r2>")
    theirs = _reference(tiny_source)
    theirs.load_textual_inversion(str(path), token=["<r1>", "<r2>"])
    prompt = "<r2> and <r1>"
    assert np.abs(_ours(ours, prompt) - _theirs(theirs, prompt)).max() <= MAX_IMAGE_DIFF
    with pytest.raises(InputError, match="3 tokens for one file need a bare tensor of 3 rows"):
        ours.load_textual_inversion(path, token=["<a>", "<b>", "<c>"])


def test_a_folder_built_without_the_table_input_says_to_rebuild(tiny_built, files, tmp_path):
    import json
    import shutil

    from sdrt.errors import ModelFolderError

    folder = tmp_path / "old"
    shutil.copytree(tiny_built, folder)
    manifest = json.loads((folder / "sdrt.json").read_text())
    del manifest["components"]["text_encoder"]["token_embedding"]  # as sdrt wrote it before
    (folder / "sdrt.json").write_text(json.dumps(manifest))
    pipe = sdrt.Pipeline.load(folder)
    with pytest.raises(ModelFolderError, match="takes no token-embedding table.*rebuild"):
        pipe.load_textual_inversion(files["cat"])
