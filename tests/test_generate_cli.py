"""``sdrt generate``: writes images (txt2img, img2img, inpainting, outpainting) with their
settings; bad input exits 2 with one line on stderr, before the model loads."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.cli import main
from sdrt.image_files import read_parameters
from sdrt.manifest import read_manifest

FAST = ["--steps", "2", "--size", "64x64", "--seed", "0", "--no-progress"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "image.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask, mode="L").save(folder / "mask.png")
    Image.fromarray(mask[:32], mode="L").save(folder / "small_mask.png")
    (folder / "not_an_image.png").write_text("hello")
    Image.new("RGB", (1024, 512), (200, 30, 30)).save(folder / "wide.png")
    Image.new("RGB", (8000, 600), (30, 200, 30)).save(folder / "huge.png")
    Image.new("RGB", (2000, 40), (30, 30, 200)).save(folder / "strip.png")
    (folder / "prompts.txt").write_text("# a comment\na red fox\n\n  a blue cat  \n# end\n")
    (folder / "empty.txt").write_text("# nothing\n\n")
    return folder


@pytest.fixture
def no_load(monkeypatch):
    """Loading the model is an error: the checks under test must come before it."""

    def load(*args, **kwargs):
        raise RuntimeError("the model was loaded before the input was checked")

    monkeypatch.setattr(sdrt.Pipeline, "load", load)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_txt2img_writes_a_png(tiny_built, tmp_path, capsys):
    out = tmp_path / "out" / "fox.png"  # the folder is made
    code = main(["generate", str(tiny_built), "a red fox", "-o", str(out), *FAST])
    assert code == 0
    assert Image.open(out).size == (64, 64)
    assert capsys.readouterr().out.strip() == str(out)
    assert [p.name for p in out.parent.iterdir()] == ["fox.png"]  # no temporary file left


def test_progress_bar_on_stderr(tiny_built, tmp_path, capsys):
    out = tmp_path / "fox.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "3"]
    args += ["--size", "64x64", "--scheduler", "euler"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "denoising" in err and "3/3" in err


def test_img2img_inpaint_and_batch(tiny_built, inputs, tmp_path):
    out = tmp_path / "edit.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), *FAST]
    args += ["--image", str(inputs / "image.png"), "--mask", str(inputs / "mask.png")]
    args += ["--strength", "0.75", "--batch", "2", "--negative-prompt", "blurry"]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit-00.png", "edit-01.png"]
    original = np.asarray(Image.open(inputs / "image.png"), dtype=np.int16)
    edited = np.asarray(Image.open(tmp_path / "edit-00.png"), dtype=np.int16)
    assert edited.shape == original.shape
    assert np.abs(edited - original).max() > 0


# ------------------------------------------------------------------ settings in the file


def test_png_carries_a1111_parameters(tiny_built, tmp_path):
    out = tmp_path / "fox.png"
    args = ["generate", str(tiny_built), "a red fox, snow", "-o", str(out), "--steps", "3"]
    args += ["--size", "64x128", "--seed", "42", "--guidance", "6", "--no-progress"]
    args += ["--negative-prompt", "blurry", "--scheduler", "dpmpp_2m_karras"]
    assert main(args) == 0
    unet_hash = read_manifest(tiny_built).components["unet"].sha256[:10]
    expected = (
        "a red fox, snow\n"
        "Negative prompt: blurry\n"
        f"Steps: 3, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 42, Size: 64x128, "
        f"Model hash: {unet_hash}, Model: {tiny_built.name}, Version: sdrt {sdrt.__version__}"
    )
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (64, 128)
        assert image.text["parameters"] == expected
    assert read_parameters(out) == expected


@pytest.mark.parametrize(
    ("scheduler", "eta", "recorded"),
    [("tcd", "0.3", ", Eta: 0.3"), ("ddim", "0", ""), ("euler", "0.3", "")],  # euler: ignored
)
def test_eta_reaches_the_scheduler_and_the_parameters(
    tiny_built, tmp_path, scheduler, eta, recorded
):
    out = tmp_path / "fox.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "4"]
    args += ["--size", "64x64", "--no-progress", "--scheduler", scheduler, "--eta", eta]
    assert main(args) == 0
    assert read_parameters(out).endswith(f"Version: sdrt {sdrt.__version__}{recorded}")
    pipe = sdrt.Pipeline.load(tiny_built)
    settings = dict(num_inference_steps=4, height=64, width=64, seed=0, scheduler=scheduler)
    want = pipe("a fox", eta=float(eta), **settings).images[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(want))


def test_img2img_parameters_name_the_strength_and_batch(tiny_built, inputs, tmp_path):
    out = tmp_path / "edit.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), *FAST, "--batch", "2"]
    args += ["--image", str(inputs / "image.png"), "--strength", "0.5"]
    assert main(args) == 0
    text = Image.open(tmp_path / "edit-01.png").text["parameters"]
    assert text.startswith("a fox\nSteps: 2, Sampler: PLMS, CFG scale: 7.5, Seed: 0, Size: 64x64")
    assert "Negative prompt" not in text
    assert ", Batch size: 2, Batch pos: 1, Denoising strength: 0.5, " in text


@pytest.mark.parametrize(
    ("suffix", "fmt"), [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".webp", "WEBP")]
)
def test_jpeg_and_webp_by_suffix_with_exif_parameters(tiny_built, tmp_path, suffix, fmt):
    out = tmp_path / f"fox{suffix}"
    args = ["generate", str(tiny_built), "a fox: ünïcode", "-o", str(out), *FAST]
    assert main(args + ["--quality", "80"]) == 0
    with Image.open(out) as image:
        assert image.format == fmt and image.size == (64, 64)
        comment = image.getexif().get_ifd(0x8769)[0x9286]  # Exif IFD, UserComment
    assert comment.startswith(b"UNICODE\x00")
    text = comment[8:].decode("utf-16-be")
    assert text.startswith("a fox: ünïcode\nSteps: 2, ")
    assert read_parameters(out) == text


# ------------------------------------------------------------------------------ seeds


def test_random_seed_is_printed_and_reproduces_the_image(tiny_built, tmp_path, capsys):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    args = ["generate", str(tiny_built), "a fox", "--steps", "2", "--size", "64"]
    args += ["--no-progress", "--scheduler", "euler_a"]  # ancestral: noise every step
    assert main([*args, "-o", str(first), "--seed", "-1"]) == 0
    err = capsys.readouterr().err
    match = re.fullmatch(r"seed: (\d+)\n", err)
    assert match, err
    seed = match.group(1)
    assert f"Seed: {seed}," in Image.open(first).text["parameters"]
    assert main([*args, "-o", str(second), "--seed", seed]) == 0
    np.testing.assert_array_equal(_pixels(first), _pixels(second))
    assert main([*args, "-o", str(second), "--seed", str(int(seed) + 1), "--force"]) == 0
    assert np.abs(_pixels(first) - _pixels(second)).max() > 0


# ------------------------------------------------------------------- several prompts


def test_several_prompts_times_batch_are_numbered_prompt_by_prompt(tiny_built, tmp_path, capsys):
    out = tmp_path / "out.png"
    args = ["generate", str(tiny_built), "a fox", "a cat", "-o", str(out), *FAST]
    assert main(args + ["--batch", "2"]) == 0
    names = ["out-00.png", "out-01.png", "out-02.png", "out-03.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in names]
    prompts = [read_parameters(tmp_path / n).split("\n")[0] for n in names]
    assert prompts == ["a fox", "a fox", "a cat", "a cat"]
    # Each prompt is its own call with the seed: a prompt's images do not depend on the others.
    alone = tmp_path / "alone" / "cat.png"
    args = ["generate", str(tiny_built), "a cat", "-o", str(alone), *FAST, "--batch", "2"]
    assert main(args) == 0
    np.testing.assert_array_equal(
        _pixels(alone.with_name("cat-01.png")), _pixels(out.with_name("out-03.png"))
    )


def test_prompt_file_skips_blank_and_comment_lines(tiny_built, inputs, tmp_path):
    out = tmp_path / "out.webp"
    args = ["generate", str(tiny_built), "first", "--prompt-file", str(inputs / "prompts.txt")]
    assert main(args + ["-o", str(out), *FAST]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["out-00.webp", "out-01.webp", "out-02.webp"]
    prompts = [read_parameters(tmp_path / n).split("\n")[0] for n in names]
    assert prompts == ["first", "a red fox", "a blue cat"]


def test_numbered_names_are_zero_padded_by_count(tmp_path):
    from sdrt.image_files import numbered_paths

    out = tmp_path / "x.png"
    assert numbered_paths(out, 1) == [out]
    assert [p.name for p in numbered_paths(out, 11)][::10] == ["x-00.png", "x-10.png"]
    assert numbered_paths(out, 101)[-1].name == "x-100.png"
    assert numbered_paths(out, 100)[-1].name == "x-99.png"


# ------------------------------------------------------------------------ image sizes


def test_image_outside_the_built_range_is_scaled_to_fit(tiny_built, inputs, tmp_path, capsys):
    out = tmp_path / "wide.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "2"]
    args += ["--image", str(inputs / "wide.png"), "--no-progress"]
    assert main(args) == 0
    assert Image.open(out).size == (256, 128)  # 1024x512 into the tiny folder's 64..256
    err = capsys.readouterr().err
    assert (
        err
        == "--image: 1024x512 scaled to 256x128, the model folder's built range (pass --size to choose)\n"
    )


def test_size_resizes_the_image(tiny_built, inputs, tmp_path):
    out = tmp_path / "huge.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "2"]
    args += ["--image", str(inputs / "huge.png"), "--size", "128x64", "--no-progress"]
    assert main(args) == 0
    assert Image.open(out).size == (128, 64)


def test_outpaint_extends_the_canvas(tiny_built, inputs, tmp_path):
    out = tmp_path / "wider.png"
    args = ["generate", str(tiny_built), "a fox", "-o", str(out), "--steps", "2", "--seed", "0"]
    args += ["--image", str(inputs / "image.png"), "--outpaint", "0,0,64,0", "--no-progress"]
    assert main(args) == 0
    assert Image.open(out).size == (128, 64)
    # Inpainting's default strength is 1.0, as diffusers' StableDiffusionInpaintPipeline.
    assert "Size: 128x64, " in read_parameters(out)
    assert "Denoising strength: 1, " in read_parameters(out)


# ------------------------------------------------------------------------------ help


def test_help_lists_schedulers_and_a_default_for_every_option(capsys):
    import argparse

    from sdrt.cli import build_parser
    from sdrt.schedulers import SCHEDULER_CLASSES, SCHEDULERS

    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in [*SCHEDULERS, *SCHEDULER_CLASSES]:
        assert re.search(rf"\b{name}\b", text), name
    assert "Default: the folder's own" in text
    (subparsers,) = [
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ]
    options = [a for a in subparsers.choices["generate"]._actions if a.option_strings]
    options = [a for a in options if a.dest != "help"]
    assert len(options) >= 16
    for action in options:
        assert "(default: " in action.help or "default: " in action.help, action.option_strings


# ---------------------------------------------------------------------- bad arguments

BAD_ARGUMENTS = [
    (["--size", "64x"], r"--size: expected N or WxH pixels \(e.g. 512 or 512x768\), got '64x'"),
    (["--size", "60x64"], r"error: --width: expected a multiple of"),
    (["--size", "512"], r"error: --height: expected a size between 64 and 256 pixels"),
    (["--size", None, "--height", "60"], r"error: --height: expected a multiple of 8"),
    (["--width", "128"], r"--width: expected the same width as --size 64x64 \(64\) or no"),
    (["--steps", "0"], r"error: --steps: expected an integer >= 1, got 0"),
    (["--batch", "0"], r"error: --batch: expected an integer >= 1, got 0"),
    (["--steps", "5000"], r"error: \w+Scheduler: --steps must be in \[1, \d+\]; got 5000$"),
    (["--deep-cache-interval", "0"], r"error: --deep-cache-interval: expected an integer >= 1"),
    (["--deep-cache-branch", "1"], r"error: --deep-cache-branch: 1 needs --deep-cache-interval"),
    (["--scheduler", "nope"], r"unknown scheduler 'nope'"),
    (["--guidance", "-1"], r"error: --guidance: expected a number >= 0 .*, got -1"),
    (["--eta", "-0.5"], r"error: --eta: expected a number >= 0, got -0.5$"),
    (["--eta", "nan"], r"error: --eta: expected a finite number, got nan$"),
    (
        ["--scheduler", "tcd", "--eta", "2"],
        r"error: TCDScheduler: --eta must be in \[0, 1\]; got 2$",
    ),
    (["--strength", "0.5"], r"--strength: applies to a start image; pass --image too"),
    (["--outpaint", "0,0,64,0"], r"--outpaint: applies to a start image; pass --image too"),
    (["--seed", "-2"], r"--seed: expected an integer >= 0, or -1 for a random seed, got -2"),
    (["--quality", "80"], r"--quality: applies to .jpg, .jpeg and .webp output, not .png"),
    (["--prompt-file", "{inputs}/missing.txt"], r"--prompt-file: no such file"),
    (["--prompt-file", "{inputs}/empty.txt"], r"--prompt-file: expected at least one prompt"),
    (["--image", "{inputs}/missing.png"], r"--image: no such file"),
    (["--image", "{inputs}/not_an_image.png"], r"--image: cannot read .* as an image"),
    (
        ["--image", "{inputs}/image.png", "--strength", "0"],
        r"error: --strength: expected a number in \(0, 1\]",
    ),
    (
        ["--image", "{inputs}/image.png", "--steps", "1", "--strength", "0.3"],
        r"error: --strength: 0.3 of --steps 1 leaves no denoising step .* expected --steps \* "
        r"--strength >= 1$",
    ),
    (
        ["--mask", "{inputs}/mask.png"],
        r"error: --mask: inpainting needs the image to repaint; pass --image too$",
    ),
    (
        ["--image", "{inputs}/image.png", "--mask", "{inputs}/small_mask.png"],
        r"error: --mask: expected the size of --image, 64x64, got 64x32",
    ),
    (
        ["--image", "{inputs}/image.png", "--mask", "{inputs}/mask.png", "--outpaint", "8,0,0,0"],
        r"--outpaint: makes its own mask; expected no --mask with it",
    ),
    (["--image", "{inputs}/image.png", "--outpaint", "8,0,0"], r"--outpaint: expected LEFT,TOP"),
    (["--image", "{inputs}/image.png", "--outpaint", "0,-8,0,0"], r"--outpaint: expected LEFT"),
    (["--image", "{inputs}/image.png", "--outpaint", "0,0,0,0"], r"at least one margin above 0"),
    (
        ["--image", "{inputs}/strip.png", "--size", None],
        r"error: --image: expected an aspect ratio that fits .* \(64 to 256 pixels a side\), "
        r"got a 2000x40 image; pass --height and --width to resize it",
    ),
    (["-o", "{tmp}"], r"-o: expected a file name ending in .png, .jpg, .jpeg, .webp, got"),
    (["-o", "{tmp}/x.gif"], r"-o: expected a file name ending in .png, .jpg, .jpeg, .webp"),
    (["-o", "{tmp}/sub.png"], r"-o: expected a file name, got .*, which is a folder"),
    (
        ["-o", "{inputs}/prompts.txt/x.png"],
        r"-o: expected a file name in a folder, got .* is a file",
    ),
    (["-o", "/proc/sdrt-test.png"], r"-o: expected a place where files can be written"),
    (["-o", "{tmp}/out.jpg", "--quality", "0"], r"--quality: expected an integer in 1..100"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line_before_loading(
    tiny_built, inputs, tmp_path, capsys, no_load, extra, message
):
    (tmp_path / "sub.png").mkdir()
    args = ["generate", str(tiny_built), "a fox", "-o", str(tmp_path / "out.png")]
    args += ["--steps", "2", "--size", "64x64", "--no-progress"]
    extra = [a if a is None else a.format(inputs=inputs, tmp=tmp_path) for a in extra]
    if None in extra:  # drop an option of the defaults: [option, None]
        at = extra.index(None) - 1
        drop = args.index(extra[at])
        del args[drop : drop + 2], extra[at : at + 2]
    code = main(args + extra)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sdrt generate: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.png"]  # nothing written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_exits_2_before_loading(tiny_built, tmp_path, capsys, no_load):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code = main(["generate", str(tiny_built), "a fox", "-o", str(folder / "x.png")])
    finally:
        folder.chmod(0o755)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("sdrt generate: error: -o: expected a place where files can be written")
    assert len(err.strip().splitlines()) == 1
    assert list(folder.iterdir()) == []


def test_no_prompt_exits_2(tiny_built, tmp_path, capsys, no_load):
    assert main(["generate", str(tiny_built), "-o", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == (
        "sdrt generate: error: expected a PROMPT or --prompt-file, got neither\n"
    )


def test_an_existing_output_is_kept_without_force_and_refused_before_loading(
    tiny_built, tmp_path, capsys, no_load
):
    out = tmp_path / "out.png"
    out.write_bytes(b"the user's picture")
    code = main(["generate", str(tiny_built), "a fox", "-o", str(out), *FAST])
    assert code == 2
    assert capsys.readouterr().err == (
        f"sdrt generate: error: -o: {str(out)!r} already exists; pass --force to replace it\n"
    )
    assert out.read_bytes() == b"the user's picture"


def test_a_numbered_output_that_exists_is_named(tiny_built, tmp_path, capsys, no_load):
    (tmp_path / "out-01.png").write_bytes(b"mine")
    args = ["generate", str(tiny_built), "a fox", "-o", str(tmp_path / "out.png"), *FAST]
    assert main(args + ["--batch", "2"]) == 2
    err = capsys.readouterr().err
    assert f"-o: {str(tmp_path / 'out-01.png')!r} already exists; pass --force" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-01.png"]


def test_force_replaces_an_existing_output(tiny_built, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"old")
    assert main(["generate", str(tiny_built), "a fox", "-o", str(out), *FAST, "--force"]) == 0
    assert Image.open(out).size == (64, 64)


def test_not_a_model_folder_exits_2(tmp_path, capsys):
    code = main(["generate", str(tmp_path), "a fox", "-o", str(tmp_path / "out.png")])
    assert code == 2
    assert "is not an sdrt model folder" in capsys.readouterr().err


def test_written_files_get_ordinary_permissions(tmp_path):
    from sdrt.files import atomic_write

    target = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        atomic_write(target, lambda f: f.write("x"), binary=False)
    finally:
        os.umask(old)
    assert target.read_text() == "x"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
