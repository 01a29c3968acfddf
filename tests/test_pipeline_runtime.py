"""The runtime as services embed it: no torch, threads, progress and cancel, caches, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.errors import InputError, ModelFolderError, NumericsError
from sdrt.images import outpaint_canvas
from sdrt.pipeline import Progress

STEPS = 2
SIZE = 64
FAST = dict(num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="np")


@pytest.fixture(scope="module")
def pipe(tiny_built):
    return sdrt.Pipeline.load(tiny_built)


def _image(width: int = SIZE, height: int = SIZE) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _mask(width: int = SIZE, height: int = SIZE) -> Image.Image:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, width // 2 :] = 255
    return Image.fromarray(mask, mode="L")


def test_no_torch_diffusers_or_transformers_after_generating(tiny_built, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from PIL import Image
        import sdrt

        pipe = sdrt.Pipeline.load({str(tiny_built)!r})
        image = pipe("a fox", num_inference_steps=2, height=64, width=64, seed=0).images[0]
        image.save({str(tmp_path / "fox.png")!r})
        pipe("a fox", image=image, strength=0.5, num_inference_steps=2, seed=0)
        mask = Image.fromarray(np.full((64, 64), 255, np.uint8))
        pipe("a fox", image=image, mask_image=mask, num_inference_steps=2, seed=0)
        heavy = sorted({{"torch", "diffusers", "transformers"}} & set(sys.modules))
        print("HEAVY=" + ",".join(heavy))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY=\n" in done.stdout, done.stdout
    assert Image.open(tmp_path / "fox.png").size == (SIZE, SIZE)


def test_threads_give_the_images_of_sequential_calls(pipe):
    jobs = [
        dict(prompt="a red fox", seed=1, scheduler="euler_a"),
        dict(prompt="a blue cat", seed=2, guidance_scale=1.0),
        dict(prompt="a green owl", seed=3, negative_prompt="blurry"),
        dict(prompt="a red fox", seed=4, image=_image(), strength=0.5),
    ]
    sequential = [pipe(**job, **FAST).images for job in jobs]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = pipe(**jobs[index], **FAST).images
        except BaseException as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for index, expected in enumerate(sequential):
        np.testing.assert_array_equal(results[index], expected)


def test_same_seed_same_image_other_seed_other_image(pipe):
    first = pipe("a fox", seed=11, **FAST).images
    again = pipe("a fox", seed=11, **FAST).images
    other = pipe("a fox", seed=12, **FAST).images
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 0.01


def test_generator_yields_each_step_and_the_result_last(pipe):
    events = list(pipe.generate(pipe.request("a fox", seed=0, scheduler="heun", **FAST)))
    # Heun calls the U-Net twice per step but the last; one Progress per call, counting
    # the steps asked for as diffusers' progress bar does.
    calls = 2 * STEPS - 1
    assert [e.unet_calls for e in events] == list(range(1, calls + 1))
    assert all(e.total_unet_calls == calls for e in events)
    assert [e.step for e in events] == [0, 1, 2]
    assert all(e.total_steps == STEPS for e in events)
    assert all(e.result is None for e in events[:-1])
    assert events[-1].result.images.shape == (1, SIZE, SIZE, 3)


@pytest.mark.parametrize(
    ("scheduler", "strength", "steps"),
    [("pndm", None, 20), ("pndm", 0.5, 10), ("heun", None, 20), ("euler", 0.5, 10)],
)
def test_progress_counts_the_steps_asked_for(pipe, scheduler, strength, steps):
    # PNDM's warm-up makes 21 U-Net calls for 20 steps: the progress says 20 (diffusers'
    # progress bar does), as for img2img's int(steps * strength) steps.
    image = {} if strength is None else {"image": _image(), "strength": strength}
    settings = {**FAST, "num_inference_steps": 20, **image}
    events = list(pipe.generate(pipe.request("a fox", seed=0, scheduler=scheduler, **settings)))
    assert {e.total_steps for e in events} == {steps}
    done = [e.step for e in events]
    assert done == sorted(done) and done[-1] == steps and done[-2] < steps
    assert len(events) == events[-1].total_unet_calls >= steps


def test_cancel_by_closing_the_generator(pipe):
    stream = pipe.generate(pipe.request("a fox", seed=0, **{**FAST, "num_inference_steps": 4}))
    first = next(stream)
    assert isinstance(first, Progress) and first.unet_calls == 1 and first.result is None
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)


def test_callback_sees_every_step(pipe):
    seen: list[int] = []
    result = pipe(
        "a fox", seed=0, scheduler="euler", callback=lambda p: seen.append(p.step), **FAST
    )
    assert seen == list(range(1, STEPS + 1))
    assert result.images.shape == (1, SIZE, SIZE, 3)


def test_pil_output(pipe):
    images = pipe(
        ["a fox", "a cat"], seed=0, num_images_per_prompt=2, **{**FAST, "output_type": "pil"}
    ).images
    assert len(images) == 4
    assert all(isinstance(i, Image.Image) and i.size == (SIZE, SIZE) for i in images)


class _CountingSession:
    """Wraps a session and counts its runs (to see the prompt cache work)."""

    def __init__(self, session):
        self.inner, self.runs = session, 0
        self.name, self.inputs, self.outputs = session.name, session.inputs, session.outputs

    def run(self, feeds):
        self.runs += 1
        return self.inner.run(feeds)


def test_prompt_embeddings_are_cached_and_bounded(tiny_built):
    pipe = sdrt.Pipeline.load(tiny_built, prompt_cache_size=3)
    counting = _CountingSession(pipe.prompt_encoder.session)
    pipe.prompt_encoder.session = counting
    first = pipe("a fox", seed=0, **FAST).images
    assert counting.runs == 2  # the prompt, then the empty negative prompt
    again = pipe("a fox", seed=0, **FAST).images
    assert counting.runs == 2
    np.testing.assert_array_equal(first, again)
    pipe(["a cat", "an owl"], seed=0, **FAST)
    assert counting.runs == 3  # both new prompts in one batch; "" still cached
    assert len(pipe.prompt_encoder.cached_prompts()) == 3
    assert "a fox" not in pipe.prompt_encoder.cached_prompts()


def test_optimised_graphs_are_saved_once_and_reused(tiny_built):
    first = sdrt.Pipeline.load(tiny_built)
    unet = first._session("unet")
    assert unet.model_path.is_file()
    assert "engines" in unet.model_path.parts
    second = sdrt.Pipeline.load(tiny_built)
    assert second._session("unet").model_path == unet.model_path


def test_outpainting_helper_extends_canvas_and_masks_the_new_area(pipe):
    canvas, mask = outpaint_canvas(_image(48, 64), right=16, overlap=4)
    assert canvas.size == mask.size == (64, 64)
    mask_pixels = np.asarray(mask)
    assert mask_pixels[:, 48:].min() == 255  # the new strip is repainted
    assert mask_pixels[:, 44:48].min() == 255  # and the overlap into the original
    assert mask_pixels[:, :44].max() == 0  # the rest is kept
    np.testing.assert_array_equal(np.asarray(canvas)[:, :48], np.asarray(_image(48, 64)))
    images = pipe("a wide landscape", image=canvas, mask_image=mask, seed=0, **FAST).images
    assert images.shape == (1, 64, 64, 3)


def test_nan_latents_are_reported_not_saved_black(pipe):
    latents = np.full((1, 4, SIZE // 8, SIZE // 8), np.nan, dtype=np.float32)
    with pytest.raises(
        NumericsError, match=r"NaN or Inf in the decoded image\(s\) \[0\] .*denoising loop"
    ):
        pipe("a fox", latents=latents, **FAST)


class _OverflowingDecoder(_CountingSession):
    def run(self, feeds):
        out = self.inner.run(feeds)
        sample = out["sample"].copy()
        sample[-1, 0, 0, 0] = np.inf
        return {**out, "sample": sample}


def test_decoder_overflow_is_reported(tiny_built):
    pipe = sdrt.Pipeline.load(tiny_built)
    pipe._sessions["vae_decoder"] = _OverflowingDecoder(pipe._sessions["vae_decoder"])
    with pytest.raises(
        NumericsError,
        match=r"NaN or Inf in the decoded image\(s\) \[1\] of a batch of 2: .*VAE decoder overflowed",
    ):
        pipe(["a fox", "a cat"], seed=0, **FAST)


# ------------------------------------------------------------------------------ bad input

BAD_INPUTS = [
    (dict(height=60), r"height: expected a multiple of \d+ .* got 60"),
    (dict(width=1024), r"width: expected a size between 64 and 256 pixels .* got 1024"),
    (dict(height=0), r"height: expected an integer >= 1, got 0"),
    (dict(num_inference_steps=0), r"num_inference_steps: expected an integer >= 1, got 0"),
    (dict(num_inference_steps=2.5), r"num_inference_steps: expected an integer, got float 2.5"),
    (dict(scheduler="nope"), r"unknown scheduler 'nope'; expected one of .*euler_a"),
    (dict(prompt=""), None),  # an empty prompt is fine
    (dict(prompt=[]), r"prompt: expected a string or a non-empty list of strings, got \[\]"),
    (dict(prompt=["a", 3]), r"prompt: expected a string or a non-empty list of strings"),
    (
        dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]),
        r"negative_prompt: expected one prompt or 2 \(one per prompt\), got 3",
    ),
    (dict(guidance_scale=float("nan")), r"guidance_scale: expected a finite number, got nan"),
    (dict(num_images_per_prompt=0), r"num_images_per_prompt: expected an integer >= 1, got 0"),
    (dict(output_type="latent"), r"output_type: expected one of 'pil', 'np', got 'latent'"),
    (dict(seed=-1), r"seed: expected an integer >= 0, got -1"),
    (dict(image=_image(), strength=0.0), r"strength: expected a number in \(0, 1\], got 0.0"),
    (dict(image=_image(), strength=1.5), r"strength: expected a number in \(0, 1\], got 1.5"),
    (dict(image="fox.png"), r"image: expected a PIL image or a numpy array, got str"),
    (dict(mask_image=_mask()), r"mask_image: inpainting needs the image to repaint"),
    (
        dict(image=_image(), mask_image=_mask(32, 64)),
        r"mask_image: expected the size of image, 64x64, got 32x64",
    ),
    (
        dict(image=np.zeros((32, 32, 3), np.float32)),
        r"image: expected an array of 64x64 pixels, got 32x32",
    ),
    (
        dict(image=np.full((64, 64, 3), 2.0, np.float32)),
        r"image: expected float pixels in \[0, 1\], got values in \[2, 2\]",
    ),
    (
        dict(latents=np.zeros((2, 4, 8, 8), np.float32)),
        r"latents: expected an array of shape \(1, 4, 8, 8\) .* got ndarray of shape \(2, 4, 8, 8\)",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_bad_input_message(pipe, overrides, message):
    kwargs = {"prompt": "a fox", "seed": 0, **FAST, **overrides}
    if message is None:
        pipe(**kwargs)
        return
    with pytest.raises(InputError, match=message):
        pipe(**kwargs)


def test_bad_backend(tiny_built):
    with pytest.raises(InputError, match=r"backend: expected one of .*, got 'cuda'"):
        sdrt.Pipeline.load(tiny_built, backend="cuda")


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist or is not a folder"):
        sdrt.Pipeline.load(tmp_path / "missing")
    with pytest.raises(ModelFolderError, match=r"is not an sdrt model folder: it has no sdrt.json"):
        sdrt.Pipeline.load(tmp_path)


def test_changed_files_are_refused(tiny_built, tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_built, copy, ignore=shutil.ignore_patterns("engines"))
    manifest = json.loads((copy / "sdrt.json").read_text())
    changed = copy / manifest["components"]["vae_decoder"]["file"]
    changed.write_bytes(changed.read_bytes() + b"\0")
    with pytest.raises(
        ModelFolderError, match=r"do not match their sha256 .*vae_decoder/model.onnx"
    ):
        sdrt.Pipeline.load(copy)
    (copy / "unet" / "model.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"missing: unet/model.onnx"):
        sdrt.Pipeline.load(copy, verify_files=False)


def test_default_size_is_the_size_the_folder_was_built_for(pipe):
    size = pipe.manifest.build.opt_size
    images = pipe("a fox", num_inference_steps=1, seed=0, output_type="np").images
    assert images.shape == (1, size, size, 3)
    # With an image, its own size (rounded down to the size multiple) is the default.
    images = pipe("a fox", image=_image(72, 68), num_inference_steps=2, output_type="np").images
    multiple = pipe.manifest.build.size_multiple
    assert images.shape == (1, 68 // multiple * multiple, 72 // multiple * multiple, 3)
