"""sdrt's ControlNet calls give diffusers' StableDiffusionControlNet(Img2Img/Inpaint)Pipeline
images on the same weights, noise and control images (tiny random ControlNets made by
``ControlNetModel.from_unet``, tests/controlnet_helpers.py), and bad control arguments are
clear errors. Randomness is made the same on both sides as in tests/test_pipeline_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_CONTROLNETS
from controlnet_helpers import control_picture, controlnet_options, rebuild_with
from parity_helpers import inject_noise, max_diff
from test_pipeline_parity import (
    MAX_IMAGE_DIFF,
    _deterministic_vae_encoder,
    _inpaint_mask,
    _test_image,
)

import sdrt
from sdrt.errors import ParameterError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

STEPS = 3
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]
HEIGHT, WIDTH = 64, 96
EDGES, DEPTH = TINY_CONTROLNETS


@pytest.fixture(scope="module")
def sd(tiny_built_controlnet):
    return sdrt.Pipeline.load(tiny_built_controlnet)


@pytest.fixture(scope="module")
def eager_controlnets(tiny_controlnet_sources):
    return {
        name: diffusers.ControlNetModel.from_pretrained(str(path)).eval()
        for name, path in tiny_controlnet_sources.items()
    }


@pytest.fixture(scope="module")
def components(tiny_source):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_source), safety_checker=None, requires_safety_checker=False
    )
    return {
        **pipe.components,
        "scheduler": diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config),
    }


def _reference(components, eager_controlnets, names, cls=None):
    cls = cls or diffusers.StableDiffusionControlNetPipeline
    nets = [eager_controlnets[n] for n in names]
    pipe = cls(**components, controlnet=nets[0] if len(nets) == 1 else nets)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(batch: int, seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    shape = (batch, 4, height // 8, width // 8)
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _controlnet_steps(result) -> list[int]:
    return [t.step for t in result.timings if t.stage == "controlnet"]


SETTINGS = dict(
    num_inference_steps=STEPS,
    guidance_scale=7.5,
    height=HEIGHT,
    width=WIDTH,
    output_type="np",
)


def test_txt2img_equals_diffusers_and_the_control_image_matters(sd, components, eager_controlnets):
    latents = _latents(2, seed=1)
    image = control_picture(WIDTH, HEIGHT, seed=0)
    reference = _reference(components, eager_controlnets, [EDGES])
    settings = dict(SETTINGS, controlnet_conditioning_scale=0.8)
    theirs = reference(PROMPTS, image=image, latents=torch.from_numpy(latents), **settings).images
    ours = sd(
        PROMPTS,
        control_image=image,
        controlnet=EDGES,
        latents=latents,
        scheduler="euler",
        **settings,
    )
    assert max_diff(ours.images, theirs) <= MAX_IMAGE_DIFF
    assert _controlnet_steps(ours) == list(range(STEPS))
    plain = sd(PROMPTS, latents=latents, scheduler="euler", **SETTINGS).images
    assert max_diff(plain, theirs) > 100 * MAX_IMAGE_DIFF


def test_guidance_window_skips_the_steps_outside_it(sd, components, eager_controlnets):
    latents = _latents(1, seed=2)
    image = control_picture(WIDTH, HEIGHT, seed=1)
    reference = _reference(components, eager_controlnets, [DEPTH])
    window = dict(control_guidance_start=0.3, control_guidance_end=0.7)
    theirs = reference(
        PROMPTS[0], image=image, latents=torch.from_numpy(latents), **window, **SETTINGS
    ).images
    ours = sd(
        PROMPTS[0],
        control_image=[image],
        controlnet=[DEPTH],
        latents=latents,
        scheduler="euler",
        **window,
        **SETTINGS,
    )
    assert max_diff(ours.images, theirs) <= MAX_IMAGE_DIFF
    # diffusers' controlnet_keep of 3 steps in [0.3, 0.7]: only i = 1 (1/3 >= 0.3, 2/3 <= 0.7)
    assert _controlnet_steps(ours) == [1]


def test_guess_mode_equals_diffusers(sd, components, eager_controlnets):
    latents = _latents(2, seed=3)
    image = control_picture(WIDTH, HEIGHT, seed=2)
    reference = _reference(components, eager_controlnets, [EDGES])
    settings = dict(SETTINGS, guess_mode=True, num_images_per_prompt=2)
    theirs = reference(
        PROMPTS[0], image=image, latents=torch.from_numpy(latents), **settings
    ).images
    ours = sd(
        PROMPTS[0],
        control_image=image,
        controlnet=EDGES,
        latents=latents,
        scheduler="euler",
        **settings,
    ).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF
    not_guessed = sd(
        PROMPTS[0],
        control_image=image,
        controlnet=EDGES,
        latents=latents,
        scheduler="euler",
        **dict(settings, guess_mode=False),
    ).images
    assert max_diff(not_guessed, theirs) > 100 * MAX_IMAGE_DIFF


def test_multi_controlnet_sums_residuals_as_diffusers(sd, components, eager_controlnets):
    latents = _latents(1, seed=4)
    images = [control_picture(WIDTH, HEIGHT, seed=3), control_picture(WIDTH, HEIGHT, seed=4)]
    # built order is (edges, depth); the call picks them the other way round
    names = [DEPTH, EDGES]
    per_net = dict(
        controlnet_conditioning_scale=[0.6, 1.2],
        control_guidance_start=[0.0, 0.3],
        control_guidance_end=[0.7, 1.0],
    )
    reference = _reference(components, eager_controlnets, names)
    theirs = reference(
        PROMPTS[1], image=images, latents=torch.from_numpy(latents), **per_net, **SETTINGS
    ).images
    ours = sd(
        PROMPTS[1],
        control_image=images,
        controlnet=names,
        latents=latents,
        scheduler="euler",
        **per_net,
        **SETTINGS,
    )
    assert max_diff(ours.images, theirs) <= MAX_IMAGE_DIFF
    # default: every ControlNet in build order
    default = sd(
        PROMPTS[1],
        control_image=images[::-1],
        latents=latents,
        scheduler="euler",
        **{k: v[::-1] for k, v in per_net.items()},
        **SETTINGS,
    )
    assert max_diff(default.images, theirs) <= MAX_IMAGE_DIFF


def test_img2img_equals_diffusers(sd, components, eager_controlnets, monkeypatch):
    from diffusers.pipelines.controlnet import pipeline_controlnet_img2img as module

    noise = _latents(1, seed=5)
    inject_noise(monkeypatch, module, [noise])
    _deterministic_vae_encoder(monkeypatch, module)
    image, control = _test_image(WIDTH, HEIGHT), control_picture(WIDTH, HEIGHT, seed=5)
    reference = _reference(
        components, eager_controlnets, [EDGES], diffusers.StableDiffusionControlNetImg2ImgPipeline
    )
    settings = dict(SETTINGS, num_inference_steps=4, strength=0.5)
    theirs = reference(PROMPTS[0], image=image, control_image=control, **settings).images
    ours = sd(
        PROMPTS[0],
        image=image,
        control_image=control,
        controlnet=EDGES,
        latents=noise,
        scheduler="euler",
        **settings,
    )
    # both at diffusers' img2img default scale, 0.8
    assert max_diff(ours.images, theirs) <= MAX_IMAGE_DIFF
    assert _controlnet_steps(ours) == [0, 1]  # int(4 * 0.5) steps


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_inpainting_equals_diffusers(sd, components, eager_controlnets, monkeypatch, strength):
    from diffusers.pipelines.controlnet import pipeline_controlnet_inpaint as module

    noise = _latents(1, seed=6)
    inject_noise(monkeypatch, module, [noise])
    _deterministic_vae_encoder(monkeypatch, module)
    image, mask = _test_image(WIDTH, HEIGHT), _inpaint_mask(WIDTH, HEIGHT)
    control = control_picture(WIDTH, HEIGHT, seed=6)
    reference = _reference(
        components, eager_controlnets, [DEPTH], diffusers.StableDiffusionControlNetInpaintPipeline
    )
    settings = dict(SETTINGS, strength=strength)
    theirs = reference(
        PROMPTS[1], image=image, mask_image=mask, control_image=control, **settings
    ).images
    ours = sd(
        PROMPTS[1],
        image=image,
        mask_image=mask,
        control_image=control,
        controlnet=DEPTH,
        latents=noise,
        scheduler="euler",
        **settings,
    ).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF


# ---------------------------------------------------------------------------- errors


ONE = control_picture(WIDTH, HEIGHT, seed=0)
RGBA = np.zeros((HEIGHT, WIDTH, 4), np.uint8)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            dict(control_image=[ONE, ONE, ONE]),
            r"control_image: expected 2 image\(s\), one per ControlNet the call runs "
            r"\(edges, depth; pick others with controlnet=\), got 3",
        ),
        (
            dict(control_image=ONE, controlnet=EDGES, controlnet_conditioning_scale=[1.0, 0.5]),
            r"controlnet_conditioning_scale: expected a number or a list of 1 .*got a list of 2",
        ),
        (
            dict(control_image=[ONE], controlnet=[EDGES], control_guidance_end=[1.0, 1.0]),
            r"control_guidance_end: expected a number or a list of 1 .*got a list of 2",
        ),
        (
            dict(control_image=ONE, controlnet="canny"),
            r"controlnet: expected names of this folder's ControlNets \(edges, depth\), "
            r"got 'canny'",
        ),
        (
            dict(control_image=RGBA, controlnet=EDGES),
            r"control_image: expected 3 channel\(s\) for the ControlNet 'edges' .* got an "
            r"array of 4",
        ),
        (
            dict(controlnet=EDGES),
            r"controlnet: expected control_image= with it .* got controlnet 'edges' alone",
        ),
        (
            dict(
                control_image=ONE,
                controlnet=EDGES,
                control_guidance_start=0.8,
                control_guidance_end=0.5,
            ),
            r"expected 0 <= start < end <= 1, got start 0.8 and end 0.5",
        ),
        (
            dict(control_image=ONE, controlnet=EDGES, deep_cache_interval=2),
            r"deep_cache_interval: DeepCache's cached steps .* got both",
        ),
    ],
)
def test_bad_control_arguments_are_clear_errors(sd, arguments, message):
    with pytest.raises(ParameterError, match=message):
        sd.request(PROMPTS[0], **arguments)


def test_control_image_on_a_folder_without_controlnets_is_a_clear_error(tiny_built):
    pipe = sdrt.Pipeline.load(tiny_built)
    with pytest.raises(ParameterError, match="built without ControlNets .* got a control image"):
        pipe.request(PROMPTS[0], control_image=control_picture(64, 64, seed=0))


# ---------------------------------------------------------------------------- fast modes


def test_openvino_backend_runs_the_controlnets_as_ort_cpu(sd, tiny_built_controlnet):
    pytest.importorskip("openvino")
    from test_backend_openvino import FP32_MAX_PIXEL_DIFFERENCE

    openvino = sdrt.Pipeline.load(tiny_built_controlnet, backend="openvino")
    latents = _latents(1, seed=7)
    images = [control_picture(WIDTH, HEIGHT, seed=7), control_picture(WIDTH, HEIGHT, seed=8)]
    settings = dict(SETTINGS, control_image=images, latents=latents, guess_mode=True)
    settings["scheduler"] = "euler"
    ours = openvino(PROMPTS[0], **settings)
    assert _controlnet_steps(ours) == list(range(STEPS))
    assert max_diff(ours.images, sd(PROMPTS[0], **settings).images) <= FP32_MAX_PIXEL_DIFFERENCE


@pytest.fixture(scope="module")
def with_tiny_vae(tiny_built_controlnet, tiny_controlnet_sources, tmp_path_factory):
    """tiny_built_controlnet rebuilt with a tiny VAE too (every other graph reused)."""
    from sdrt.export.random_tiny_vae import init_random_tiny_vae

    taesd = init_random_tiny_vae("tiny-taesd", tmp_path_factory.mktemp("cn-taesd") / "taesd")
    output = tmp_path_factory.mktemp("cn-tiny-vae") / "tiny"
    result = rebuild_with(
        tiny_built_controlnet,
        output,
        tiny_vae=str(taesd),
        controlnets=controlnet_options(tiny_controlnet_sources),
    )
    assert {r.name for r in result.components if r.action == "exported"} == {
        "vae_decoder_tiny",
        "vae_encoder_tiny",
    }
    return result.output, taesd


def test_tiny_vae_with_controlnet_equals_diffusers(with_tiny_vae, components, eager_controlnets):
    folder, taesd = with_tiny_vae
    latents = _latents(1, seed=8)
    image = control_picture(WIDTH, HEIGHT, seed=9)
    tiny = diffusers.AutoencoderTiny.from_pretrained(str(taesd)).eval()
    reference = _reference({**components, "vae": tiny}, eager_controlnets, [EDGES])
    theirs = reference(
        PROMPTS[0], image=image, latents=torch.from_numpy(latents), **SETTINGS
    ).images
    ours = sdrt.Pipeline.load(folder)(
        PROMPTS[0],
        control_image=image,
        controlnet=EDGES,
        latents=latents,
        scheduler="euler",
        vae="tiny",
        **SETTINGS,
    ).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF


class _Recorder:
    """A session that records the calls it passes on (replace_session's seam)."""

    def __init__(self, session):
        self.session, self.calls = session, 0
        self.inputs, self.outputs, self.name = session.inputs, session.outputs, session.name

    def run(self, feeds):
        self.calls += 1
        return self.session.run(feeds)


def test_calls_without_control_run_only_the_plain_unet(tiny_built_controlnet):
    from sdrt.manifest import CONTROLNET_UNET

    pipe = sdrt.Pipeline.load(tiny_built_controlnet)
    plain = _Recorder(pipe.session("unet"))
    pipe.replace_session("unet", plain)
    residual = _Recorder(pipe.session(CONTROLNET_UNET))
    pipe.replace_session(CONTROLNET_UNET, residual)
    image = control_picture(WIDTH, HEIGHT, seed=0)
    settings = dict(SETTINGS, scheduler="euler", latents=_latents(1, seed=0))
    result = pipe(PROMPTS[0], **settings)
    assert (plain.calls, residual.calls, _controlnet_steps(result)) == (STEPS, 0, [])
    # with control in the last two of three steps: the residual U-Net there, the plain one first
    pipe(PROMPTS[0], control_image=image, controlnet=EDGES, control_guidance_start=0.3, **settings)
    assert (plain.calls, residual.calls) == (STEPS + 1, 2)


@pytest.mark.heavy  # its own build of the inpainting model: over a minute of CPU
def test_inpainting_unet_with_a_controlnet_equals_diffusers(
    tiny_controlnet_sources, eager_controlnets, tmp_path_factory, monkeypatch
):
    """A 9-channel inpainting U-Net with a ControlNet of the 4-channel architecture (as SD
    1.5 inpainting runs SD 1.5 ControlNets): the ControlNet sees the latents alone."""
    from diffusers.pipelines.controlnet import pipeline_controlnet_inpaint as module
    from sdrt.export.build import BuildConfig, build
    from sdrt.export.controlnet_options import ControlNetOption
    from sdrt.export.random_model import init_random_model

    source = init_random_model("tiny-inpaint", tmp_path_factory.mktemp("cn-inpaint") / "src")
    config = BuildConfig(
        source=str(source),
        output=source.parent / "built",
        min_size=64,
        max_size=128,
        controlnets=(ControlNetOption(EDGES, str(tiny_controlnet_sources[EDGES])),),
    )
    sd9 = sdrt.Pipeline.load(build(config).output)
    assert sd9.manifest.unet_in_channels == 9
    noise = _latents(1, seed=10)
    inject_noise(monkeypatch, module, [noise])
    _deterministic_vae_encoder(monkeypatch, module)
    image, mask = _test_image(WIDTH, HEIGHT), _inpaint_mask(WIDTH, HEIGHT)
    control = control_picture(WIDTH, HEIGHT, seed=10)
    reference = diffusers.StableDiffusionControlNetInpaintPipeline.from_pretrained(
        str(source), controlnet=eager_controlnets[EDGES], safety_checker=None
    )
    reference.set_progress_bar_config(disable=True)
    settings = dict(SETTINGS, strength=0.75)
    theirs = reference(
        PROMPTS[0], image=image, mask_image=mask, control_image=control, **settings
    ).images
    ours = sd9(
        PROMPTS[0], image=image, mask_image=mask, control_image=control, latents=noise, **settings
    ).images
    assert max_diff(ours, theirs) <= MAX_IMAGE_DIFF


def test_the_control_image_sets_the_size_without_height_and_width(sd):
    """As diffusers' ControlNet pipelines: the output takes the control image's size (here
    96x64; the folder's own default is 64x64)."""
    request = sd.request(
        PROMPTS[0], control_image=control_picture(96, 64, seed=0), controlnet=EDGES
    )
    assert (request.width, request.height) == (96, 64)
