"""Recipes (sdrt/recipes.py): a distilled model's steps, guidance and scheduler, recorded by
``sdrt build`` in sdrt.json and taken by calls that leave those settings out.

Turbo at 1 step, guidance 0 (Euler a, trailing timesteps; tiny and tiny-xl) and
SDXL-Lightning's trailing Euler at 4 steps (tiny-xl) give diffusers' images on the same
weights and latents, diffusers' scheduler made as the model cards make it
(``Class.from_config(config, timestep_spacing="trailing")``). The parity folders are the
session's tiny builds with a recipe written into a copy's sdrt.json; ``tiny-turbo`` is built
once, end to end through the CLI (init-model -> build -> sdrt.json -> info -> generate).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

import sdrt
from sdrt.cli import main
from sdrt.errors import InputError, ModelFolderError
from sdrt.manifest import (
    Recipe,
    manifest_from_dict,
    manifest_to_dict,
    read_manifest,
    write_manifest,
)
from sdrt.recipes import (
    RECIPES,
    RecipeGuidanceWarning,
    parse_recipe_option,
    recipe_of_source,
    resolve_recipe,
)

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# As tests/test_pipeline_parity.py: float32 rounding only (different kernels, summation orders).
MAX_IMAGE_DIFF = 1e-4
PROMPTS = ["a red fox in the snow", "an astronaut riding a horse"]


def _with_recipe(built, tmp_path_factory, recipe: Recipe):
    """A copy of a built folder whose sdrt.json records ``recipe``."""
    folder = tmp_path_factory.mktemp(recipe.name) / "folder"
    shutil.copytree(built, folder)
    write_manifest(folder, dataclasses.replace(read_manifest(folder), recipe=recipe))
    return folder


def _trailing(reference, scheduler: str, pipeline_class):
    """The reference pipeline with ``scheduler`` on trailing timesteps, as the cards set it."""
    cls = getattr(diffusers, scheduler)
    config = reference.scheduler.config
    return pipeline_class(
        **{
            **reference.components,
            "scheduler": cls.from_config(config, timestep_spacing="trailing"),
        }
    )


def _latents(batch: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 4, size // 8, size // 8), np.float32)


@pytest.fixture(scope="module")
def turbo(tiny_built, tmp_path_factory):
    return sdrt.Pipeline.load(_with_recipe(tiny_built, tmp_path_factory, RECIPES["sd-turbo"]))


@pytest.fixture(scope="module")
def reference(tiny_source):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        str(tiny_source), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference_xl(tiny_xl_source):
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(str(tiny_xl_source))
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------ parity with diffusers


def test_turbo_one_step_without_guidance_matches_diffusers(turbo, reference):
    latents = _latents(2)
    ours = turbo(PROMPTS, latents=latents, output_type="np").images  # all from the recipe
    theirs = _trailing(reference, "EulerAncestralDiscreteScheduler", type(reference))(
        PROMPTS,
        num_inference_steps=1,
        guidance_scale=0.0,
        latents=torch.from_numpy(latents),
        output_type="np",
    ).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF
    # The folder's own scheduler (PNDM, leading) at 20 steps is another image altogether.
    plain = turbo(
        PROMPTS, latents=latents, num_inference_steps=20, scheduler="pndm", output_type="np"
    ).images
    assert float(np.abs(plain - theirs).max()) > 100 * MAX_IMAGE_DIFF


@pytest.mark.parametrize(
    ("recipe", "scheduler", "steps"),
    [
        ("sdxl-turbo", "EulerAncestralDiscreteScheduler", 1),
        ("sdxl-lightning-4step", "EulerDiscreteScheduler", 4),
    ],
)
def test_xl_turbo_and_lightning_match_diffusers(
    tiny_xl_built, reference_xl, tmp_path_factory, recipe, scheduler, steps
):
    sd = sdrt.Pipeline.load(_with_recipe(tiny_xl_built, tmp_path_factory, RECIPES[recipe]))
    latents = _latents(2)
    ours = sd(PROMPTS, latents=latents, output_type="np").images
    request = sd.request(PROMPTS)
    assert (request.num_inference_steps, request.guidance_scale) == (steps, 0.0)
    theirs = _trailing(reference_xl, scheduler, diffusers.StableDiffusionXLPipeline)(
        PROMPTS,
        num_inference_steps=steps,
        guidance_scale=0.0,
        latents=torch.from_numpy(latents),
        output_type="np",
    ).images
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF


# ------------------------------------------------------------------ calls take the recipe


def test_arguments_given_win_over_the_recipe(turbo):
    request = turbo.request("a fox", num_inference_steps=3, guidance_scale=1.0, scheduler="euler")
    assert (request.num_inference_steps, request.guidance_scale) == (3, 1.0)
    assert (request.scheduler, dict(request.scheduler_config)) == ("euler", {})
    # A caller's own 20 and 7.5 are not "left at the default".
    assert turbo.request("a fox", num_inference_steps=20).num_inference_steps == 20


def test_walks_take_the_recipe_too(turbo):
    request = turbo.walk(["a fox", "a cat"], num_frames=3).request
    assert (request.num_inference_steps, request.guidance_scale) == (1, 0.0)
    assert dict(request.scheduler_config) == {"timestep_spacing": "trailing"}
    assert turbo.walk(["a fox", "a cat"], num_inference_steps=2).request.num_inference_steps == 2


def test_img2img_whose_steps_times_strength_leaves_no_step_names_the_recipe(turbo):
    image = Image.new("RGB", (64, 64), "gray")
    # diffusers' img2img runs int(steps * strength) steps: 1 * 0.8 leaves none (the SDXL
    # Turbo guide: "make sure num_inference_steps * strength is larger or equal to 1").
    with pytest.raises(
        InputError,
        match=r"strength: 0.8 of num_inference_steps 1 \(this folder's sd-turbo recipe\) leaves no denoising step",
    ):
        turbo.request("a fox", image=image)
    assert turbo.request("a fox", image=image, num_inference_steps=2, strength=0.5).strength == 0.5


def test_guidance_the_recipe_does_not_allow_warns_once(turbo, tmp_path_factory, tiny_built):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        turbo.request("a fox")  # the recipe's guidance 0
        turbo.request("a fox", guidance_scale=1.0)  # <= 1: guidance off, nothing to warn
    assert not [w for w in caught if issubclass(w.category, RecipeGuidanceWarning)]
    with pytest.warns(RecipeGuidanceWarning) as caught:
        turbo.request("a fox", guidance_scale=7.5)
    (warning,) = [w for w in caught if issubclass(w.category, RecipeGuidanceWarning)]
    assert str(warning.message).startswith(
        "guidance_scale 7.5: this folder's sd-turbo recipe uses 0 and allows at most 1 "
    )


def test_generate_says_the_guidance_warning_in_one_line(turbo, tmp_path, capsys):
    out = tmp_path / "fox.png"
    command = ["generate", str(turbo.folder), "a fox", "a cat", "-o", str(out), "--no-progress"]
    assert main([*command, "--guidance", "7.5"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert lines == [
        "sdrt generate: warning: guidance_scale 7.5: this folder's sd-turbo recipe uses 0 and "
        "allows at most 1 (stabilityai/sd-turbo's card); a larger scale runs classifier-free "
        "guidance the model was not distilled for"
    ]


def test_lcm_lora_warns_above_its_cards_range():
    from sdrt.recipes import warn_guidance

    with pytest.warns(RecipeGuidanceWarning, match=r"lcm-lora recipe uses 1 and allows at most 2"):
        warn_guidance(RECIPES["lcm-lora"], 3.0, embedded=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_guidance(RECIPES["lcm-lora"], 2.0, embedded=False)
        warn_guidance(RECIPES["lcm"], 8.5, embedded=True)  # an embedding takes any scale


def test_a_served_body_that_leaves_settings_out_takes_the_recipe(turbo):
    from sdrt.service.config import Limits
    from sdrt.service.params import make_generation

    request = make_generation(turbo, {"prompt": "a fox", "size": "64x64"}, Limits()).request
    assert (request.num_inference_steps, request.guidance_scale) == (1, 0.0)
    assert request.scheduler == "EulerAncestralDiscreteScheduler"
    assert dict(request.scheduler_config) == {"timestep_spacing": "trailing"}
    body = {"prompt": "a fox", "size": "64x64", "num_inference_steps": 2, "scheduler": "euler"}
    request = make_generation(turbo, body, Limits()).request
    assert (request.num_inference_steps, request.scheduler) == (2, "euler")


# ------------------------------------------------------------------ where recipes come from


def _configs(name: str) -> dict:
    from sdrt.export.architectures import ARCHITECTURES

    arch = ARCHITECTURES[name]
    configs = {folder: dict(c.config) for folder, c in arch.components.items()}
    return {**configs, "scheduler": dict(arch.scheduler)}


def test_the_source_configs_give_lcm_lcm_lora_and_tcd_and_nothing_else():
    assert recipe_of_source(_configs("tiny-lcm"), {}, "x").name == "lcm"
    lcm_scheduler = {**_configs("tiny"), "scheduler": _configs("tiny-lcm")["scheduler"]}
    assert recipe_of_source(lcm_scheduler, {}, "x").name == "lcm-lora"  # no embedding
    assert resolve_recipe(None, lcm_scheduler, {}, "x").guidance_scale == 1.0
    tcd = {**_configs("tiny"), "scheduler": {"_class_name": "TCDScheduler"}}
    assert recipe_of_source(tcd, {}, "x").name == "tcd"
    assert recipe_of_source(_configs("tiny"), {}, "x") is None
    assert recipe_of_source(_configs("tiny"), {}, "stabilityai/sd-turbo").name == "sd-turbo"
    assert (
        recipe_of_source(_configs("tiny"), {"_sdrt_recipe": "sdxl-turbo"}, "x").name == "sdxl-turbo"
    )


def test_recipe_settings_go_over_a_name_or_the_source_configs():
    option = parse_recipe_option("steps=2,guidance=1.5")
    lcm = resolve_recipe(option, _configs("tiny-lcm"), {}, "x")
    assert (lcm.name, lcm.steps, lcm.guidance_scale, lcm.scheduler) == (
        "lcm",
        2,
        1.5,
        "LCMScheduler",
    )
    custom = resolve_recipe(
        parse_recipe_option("steps=4,guidance=0,scheduler=DDIMScheduler,timestep_spacing=trailing"),
        _configs("tiny"),
        {},
        "x",
    )
    assert (custom.name, custom.scheduler, dict(custom.scheduler_config)) == (
        "custom",
        "DDIMScheduler",
        {"timestep_spacing": "trailing"},
    )
    assert resolve_recipe(None, _configs("tiny"), {}, "x") is None


@pytest.mark.parametrize(
    ("text", "configs", "message"),
    [
        ("lcm", "tiny", r"expected an LCM-distilled U-Net .* use --recipe lcm-lora"),
        ("scheduler=euler,spacing=trailing", "tiny", r"unknown config override\(s\) spacing"),
        (
            "sdxl-turbo,guidance=3",
            "tiny",
            r"expected a guidance scale <= its max_guidance 1, got 3",
        ),
        ("steps=2000", "tiny", r"num_inference_steps must be in \[1, 1000\]"),
    ],
)
def test_a_recipe_the_source_cannot_run_is_refused(text, configs, message):
    with pytest.raises(InputError, match=message):
        resolve_recipe(parse_recipe_option(text), _configs(configs), {}, "x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("turbo", r"expected a recipe name \(sd-turbo, .*\); got the unknown name 'turbo'"),
        ("steps=four", r"steps: expected an integer >= 1, got 'four'"),
        ("eta=2", r"eta: expected a number in \[0, 1\], got '2'"),
        ("sd-turbo,,steps=1", r"got 'sd-turbo,,steps=1'"),
        ("scheduler=fast", r"--recipe: unknown scheduler 'fast'"),
    ],
)
def test_bad_recipe_text_is_one_clear_error(text, message):
    with pytest.raises(InputError, match=message):
        parse_recipe_option(text)


def test_the_build_cli_refuses_bad_recipe_text_with_exit_2(tiny_source, tmp_path, capsys):
    code = main(["build", str(tiny_source), "-o", str(tmp_path / "out"), "--recipe", "turbo"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--recipe: expected a recipe name" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_build_of_an_onnx_folder_refuses_a_recipe(tmp_path, capsys):
    from pathlib import Path

    onnx_folder = Path(__file__).parent / "data" / "optimum_tiny"
    code = main(["build", str(onnx_folder), "-o", str(tmp_path / "out"), "--recipe", "sd-turbo"])
    assert code == 2
    assert "--recipe apply only to exporting a diffusers folder" in capsys.readouterr().err


def test_folders_without_a_recipe_load_and_recipes_round_trip(tiny_built):
    data = json.loads((tiny_built / "sdrt.json").read_text())
    data.pop("recipe", None)  # as written before recipes
    assert manifest_from_dict(data).recipe is None
    manifest = dataclasses.replace(manifest_from_dict(data), recipe=RECIPES["tcd"])
    assert manifest_from_dict(json.loads(json.dumps(manifest_to_dict(manifest)))) == manifest
    data["recipe"] = {"name": "tcd", "source": "x", "steps": "four"}
    with pytest.raises(ModelFolderError, match=r"recipe.steps: expected"):
        manifest_from_dict(data)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def turbo_built(tmp_path_factory):
    """init-model tiny-turbo, built through the CLI (the recipe comes from model_index.json)."""
    root = tmp_path_factory.mktemp("tiny-turbo")
    assert main(["init-model", "tiny-turbo", "--random-weights", str(root / "src")]) == 0
    out = root / "built"
    assert (
        main(["build", str(root / "src"), "-o", str(out), "--min-size", "64", "--max-size", "128"])
        == 0
    )
    return out


def test_build_records_the_recipe_info_shows_it_and_generate_uses_it(turbo_built, tmp_path, capsys):
    recipe = read_manifest(turbo_built).recipe
    assert recipe == dataclasses.replace(
        RECIPES["sd-turbo"], source="model_index.json _sdrt_recipe"
    )
    capsys.readouterr()
    assert main(["info", str(turbo_built)]) == 0
    assert (
        "recipe         sd-turbo: 1 step, guidance 0, EulerAncestralDiscreteScheduler "
        "(timestep_spacing=trailing)" in capsys.readouterr().out
    )
    default, explicit = tmp_path / "default.png", tmp_path / "explicit.png"
    assert main(["generate", str(turbo_built), "a fox", "-o", str(default), "--no-progress"]) == 0
    args = ["--steps", "1", "--guidance", "0", "--scheduler", "EulerAncestralDiscreteScheduler"]
    assert (
        main(["generate", str(turbo_built), "a fox", "-o", str(explicit), "--no-progress", *args])
        == 0
    )
    assert np.array_equal(np.asarray(Image.open(default)), np.asarray(Image.open(explicit)))
    assert "Steps: 1," in Image.open(default).info["parameters"]


def test_the_call_with_defaults_equals_the_call_with_the_recipes_values(turbo_built):
    pipe = sdrt.Pipeline.load(turbo_built)
    latents = _latents(1)
    default = pipe("a fox", latents=latents, output_type="np").images
    explicit = pipe(
        "a fox",
        latents=latents,
        num_inference_steps=1,
        guidance_scale=0.0,
        scheduler="EulerAncestralDiscreteScheduler",  # the folder's config is trailing already
        output_type="np",
    ).images
    assert np.array_equal(default, explicit)
    twenty = pipe("a fox", latents=latents, num_inference_steps=20, output_type="np").images
    assert not np.allclose(default, twenty, atol=1e-3)


def test_xl_turbo_img2img_as_the_turbo_guide_runs_it_matches_diffusers(
    tiny_xl_built, reference_xl, tmp_path_factory, monkeypatch
):
    """SDXL Turbo's img2img (diffusers' guide: 2 steps, strength 0.5, guidance 0): one
    step from trailing timestep 499, on diffusers' noise and the VAE's mode."""
    from diffusers.pipelines.stable_diffusion_xl import (
        pipeline_stable_diffusion_xl_img2img as module,
    )

    sd = sdrt.Pipeline.load(_with_recipe(tiny_xl_built, tmp_path_factory, RECIPES["sdxl-turbo"]))
    y, x = np.mgrid[0:64, 0:64]
    image = Image.fromarray(np.stack([x * 4, y * 4, (x + y) % 256], -1).astype(np.uint8))
    noise = _latents(1, seed=4)
    original = module.retrieve_latents

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == noise.shape
        return torch.from_numpy(noise.copy())

    def retrieve_latents(encoder_output, generator=None, sample_mode="sample"):
        return original(encoder_output, generator=generator, sample_mode="argmax")

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)
    monkeypatch.setattr(module, "retrieve_latents", retrieve_latents)
    pipe = _trailing(
        reference_xl, "EulerAncestralDiscreteScheduler", diffusers.StableDiffusionXLImg2ImgPipeline
    )
    pipe.set_progress_bar_config(disable=True)
    settings = dict(image=image, num_inference_steps=2, strength=0.5, output_type="np")
    theirs = pipe(PROMPTS[0], guidance_scale=0.0, **settings).images
    ours = sd(PROMPTS[0], latents=noise, **settings).images  # guidance and scheduler: the recipe's
    assert float(np.abs(ours - theirs).max()) <= MAX_IMAGE_DIFF
