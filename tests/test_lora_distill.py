"""Distillation LoRAs (LCM-LoRA, TCD-LoRA, Hyper-SD, SDXL-Lightning) train the U-Net's
ResNets and samplers too (3x3 convs, shortcuts, time projections): run time on a folder built
``--lora-ready all`` and fused at build time, against diffusers' ``load_lora_weights`` with
the scheduler, steps and guidance their cards use (LCMScheduler, 4 steps, guidance 1; TCD,
4 steps, guidance 0, eta 0.3), on the tiny model.

The files are written by peft and diffusers (``add_adapter`` with LCM-LoRA's target modules,
``save_lora_weights``; ``convert_state_dict_to_kohya`` for kohya's layout), not by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from gpu_fakes import use_fake_tensorrt
from lora_helpers import (
    LCM_LORA_TARGETS,
    WHOLE_UNET_TARGETS,
    write_distill_kohya_file,
    write_distill_peft_file,
)
from parity_helpers import inject_noise, step_noises

import sdrt
from sdrt.errors import InputError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

# Images in [0, 1] against diffusers: float32 rounding only (as tests/test_pipeline_lcm.py).
MAX_IMAGE_DIFF = 1e-4
# Fused at build time against the same file at run time (both float32 ONNX Runtime).
FUSED_VS_RUN_TIME = 1e-4
# The adapter must move the image by more than this, or the comparisons test nothing.
MIN_LORA_EFFECT = 1e-2
STEPS = 4  # the LCM-LoRA and TCD-LoRA cards' step count
PROMPT = "a red fox in snow"
SEED = 5
# (sdrt's scheduler name, diffusers' scheduler module, guidance, eta): the cards' settings
RECIPES = {
    "lcm": ("LCMScheduler", "scheduling_lcm", 1.0, None),
    "tcd": ("TCDScheduler", "scheduling_tcd", 0.0, 0.3),
}


@pytest.fixture(scope="module")
def files(tiny_source, tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill-loras")
    return {
        "peft": write_distill_peft_file(folder / "peft", tiny_source, 11, LCM_LORA_TARGETS),
        "kohya": write_distill_kohya_file(
            folder / "kohya.safetensors", tiny_source, 12, WHOLE_UNET_TARGETS
        ),
    }


@pytest.fixture
def pipe(tiny_built_lora_ready_all):
    return sdrt.Pipeline.load(tiny_built_lora_ready_all, backend="ort-cpu")


def _latents() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)


def _diffusers(source, lora, recipe: str, monkeypatch) -> np.ndarray:
    """StableDiffusionPipeline + the recipe's scheduler + ``lora`` (or none) loaded."""
    import importlib

    name, module, guidance, eta = RECIPES[recipe]
    scheduler_module = importlib.import_module(f"diffusers.schedulers.{module}")
    latents = _latents()
    # sdrt's draws from SEED between steps (none after the last)
    inject_noise(monkeypatch, scheduler_module, step_noises(SEED, latents.shape, STEPS - 1))
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(source, safety_checker=None)
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    with torch.no_grad():
        return pipe(
            PROMPT,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            latents=torch.from_numpy(latents),
            output_type="np",
            height=64,
            width=64,
            **({} if eta is None else {"eta": eta}),
        ).images


def _ours(pipe, recipe: str) -> np.ndarray:
    name, _, guidance, eta = RECIPES[recipe]
    return pipe(
        PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        scheduler=name,
        latents=_latents(),
        seed=SEED,
        output_type="np",
        **({} if eta is None else {"eta": eta}),
    ).images


def _diff(a, b) -> float:
    return float(np.abs(a - b).max())


@pytest.mark.parametrize(("layout", "recipe"), [("peft", "lcm"), ("kohya", "tcd")])
def test_run_time_distill_lora_equals_diffusers(
    pipe, tiny_source, files, monkeypatch, layout, recipe
):
    base = _diffusers(tiny_source, None, recipe, monkeypatch)
    theirs = _diffusers(tiny_source, files[layout], recipe, monkeypatch)
    assert _diff(_ours(pipe, recipe), base) <= MAX_IMAGE_DIFF  # the branches add 0 unfed
    pipe.load_lora_weights(files[layout], adapter_name=layout)
    ours = _ours(pipe, recipe)
    assert _diff(theirs, base) > MIN_LORA_EFFECT
    assert _diff(ours, theirs) <= MAX_IMAGE_DIFF
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(_ours(pipe, recipe), _ours(pipe, recipe))
    assert _diff(_ours(pipe, recipe), base) <= MAX_IMAGE_DIFF


class _FeedRecorder:
    """A U-Net session that records the names fed to each call and runs the real one."""

    def __init__(self, session):
        self.session = session
        self.fed: set[str] = set()

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, feeds, *args, **kwargs):
        self.fed.update(feeds)
        return self.session.run(feeds, *args, **kwargs)


def test_the_file_touches_every_module_class(pipe, files):
    """The files train 3x3 convs (ResNets, samplers, conv_in/out), 1x1 shortcuts, the time
    projections and the transformer blocks, and each one is fed at run time."""
    pipe.load_lora_weights(files["kohya"], adapter_name="k")
    branches = {b.module: b for b in pipe.manifest.components["unet"].lora_branches}
    recorder = _FeedRecorder(pipe.session("unet"))
    replaced = pipe.replace_session("unet", recorder)
    try:
        _ours(pipe, "lcm")
    finally:
        pipe.replace_session("unet", replaced)
    for module in (
        "down_blocks.0.resnets.0.conv1",  # 3x3
        "down_blocks.0.downsamplers.0.conv",  # 3x3, stride 2
        "up_blocks.0.upsamplers.0.conv",
        "up_blocks.0.resnets.0.conv_shortcut",  # 1x1
        "mid_block.resnets.0.time_emb_proj",  # Linear
        "conv_in",
        "time_embedding.linear_1",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    ):
        assert {branches[module].down, branches[module].up} <= recorder.fed, module
    assert branches["down_blocks.0.resnets.0.conv1"].kernel == (3, 3)
    assert branches["down_blocks.0.downsamplers.0.conv"].kernel == (3, 3)


def test_an_attention_only_folder_says_to_build_lora_ready_all(tiny_built_lora_ready, files):
    pipe = sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu")
    with pytest.raises(
        InputError,
        match=r"unet:down_blocks_0_downsamplers_0_conv.*rebuild with `sdrt build --lora-ready all`",
    ):
        pipe.load_lora_weights(files["kohya"])
    assert pipe.get_active_adapters() == []


@pytest.mark.heavy
def test_fused_at_build_equals_run_time_and_diffusers(
    pipe, tiny_source, files, tmp_path_factory, monkeypatch
):
    from sdrt.export.build import BuildConfig, build

    from sdrt.adapters.options import LoraOption

    fused_folder = build(
        BuildConfig(
            source=str(tiny_source),
            output=tmp_path_factory.mktemp("fused-lcm") / "tiny",
            min_size=TINY_MIN_SIZE,
            max_size=TINY_MAX_SIZE,
            loras=(LoraOption(files["peft"], 1.0),),
        )
    ).output
    fused = _ours(sdrt.Pipeline.load(fused_folder), "lcm")
    pipe.load_lora_weights(files["peft"])
    assert _diff(fused, _ours(pipe, "lcm")) <= FUSED_VS_RUN_TIME
    assert _diff(fused, _diffusers(tiny_source, files["peft"], "lcm", monkeypatch)) <= (
        MAX_IMAGE_DIFF
    )


# Refitted weights against ONNX Runtime fed the same factors (tests/test_lora_refit.py's).
REFIT_VS_FEEDS = 1e-4


def test_refit_writes_the_3x3_conv_deltas(tiny_built_lora_ready_all, files, monkeypatch):
    """TensorRT's run-time LoRA (fake engines computing the folded graph with ONNX Runtime,
    as tests/test_lora_refit.py): W + up @ down reshaped to [out, in, 3, 3] gives the image
    of the branches fed the same file; unload gives the base exactly."""
    from test_lora_refit import trt_pipeline

    use_fake_tensorrt(monkeypatch)
    fed = sdrt.Pipeline.load(tiny_built_lora_ready_all, backend="ort-cpu")
    fed.load_lora_weights(files["kohya"])
    expected = _ours(fed, "lcm")
    refitted = trt_pipeline(tiny_built_lora_ready_all)
    base = _ours(refitted, "lcm")
    refitted.load_lora_weights(files["kohya"])
    assert _diff(_ours(refitted, "lcm"), expected) <= REFIT_VS_FEEDS
    assert _diff(expected, base) > MIN_LORA_EFFECT
    refitted.unload_lora_weights()
    np.testing.assert_array_equal(_ours(refitted, "lcm"), base)


def test_build_option_lora_ready_takes_the_scope(tiny_source, tmp_path, capsys):
    from sdrt.cli import build_parser, main
    from sdrt.commands.build import config_from_args

    def config(*options):
        argv = ["build", str(tiny_source), "-o", str(tmp_path / "out"), *options]
        return config_from_args(build_parser().parse_args(argv))

    assert not config().lora_ready
    assert (config("--lora-ready").lora_ready, config("--lora-ready").lora_targets) == (
        True,
        "attention",
    )
    assert config("--lora-ready", "all").lora_targets == "all"
    assert config("--lora-ready", "attention").lora_targets == "attention"
    with pytest.raises(SystemExit) as exited:
        main(["build", str(tiny_source), "-o", str(tmp_path / "out"), "--lora-ready", "most"])
    assert exited.value.code == 2
    assert "invalid choice: 'most'" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"lora targets: expected one of attention, all"):
        from sdrt.export.build import BuildConfig

        BuildConfig(source=str(tiny_source), output=tmp_path / "o", lora_targets="most")


@pytest.fixture(scope="module")
def lightning_xl(tiny_xl_source, tmp_path_factory):
    """The tiny SDXL source with SDXL-Lightning's scheduler (Euler, trailing timesteps),
    built ``--lora-ready all``, and a Lightning/Hyper-SD-style LoRA on every U-Net module
    (ResNets, samplers, conv_in/out, time and added-condition embeddings) from peft +
    diffusers' StableDiffusionXLPipeline.save_lora_weights."""
    import json
    import shutil

    from sdrt.export.build import BuildConfig, build

    root = tmp_path_factory.mktemp("lightning-xl")
    source = root / "src"
    shutil.copytree(tiny_xl_source, source)
    config_path = source / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config.update(_class_name="EulerDiscreteScheduler", timestep_spacing="trailing")
    config_path.write_text(json.dumps(config))
    lora = write_distill_peft_file(root / "lora", source, 21, WHOLE_UNET_TARGETS, xl=True)
    built = build(
        BuildConfig(
            source=str(source),
            output=root / "built",
            min_size=TINY_MIN_SIZE,
            max_size=TINY_MAX_SIZE,
            lora_ready=True,
            lora_targets="all",
        )
    ).output
    return source, built, lora


def _xl_diffusers(source, lora, latents) -> np.ndarray:
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    with torch.no_grad():
        return pipe(
            PROMPT,
            num_inference_steps=STEPS,
            guidance_scale=0.0,  # SDXL-Lightning's card
            latents=torch.from_numpy(latents),
            output_type="np",
            height=64,
            width=64,
        ).images


@pytest.mark.heavy
def test_sdxl_lightning_style_lora_at_run_time_equals_diffusers(lightning_xl):
    source, built, lora = lightning_xl
    latents = _latents()
    pipe = sdrt.Pipeline.load(built, backend="ort-cpu")
    assert any(b.spatial for b in pipe.manifest.components["unet"].lora_branches)

    def run():
        settings = dict(num_inference_steps=STEPS, guidance_scale=0.0, output_type="np")
        return pipe(PROMPT, latents=latents, **settings).images

    base, theirs = _xl_diffusers(source, None, latents), _xl_diffusers(source, lora, latents)
    assert _diff(run(), base) <= MAX_IMAGE_DIFF
    pipe.load_lora_weights(lora)
    assert _diff(theirs, base) > MIN_LORA_EFFECT
    assert _diff(run(), theirs) <= MAX_IMAGE_DIFF


def test_sdrt_json_records_each_branch_kernel(tiny_built_lora_ready_all, tmp_path):
    import json
    import shutil

    from sdrt.errors import ModelFolderError
    from sdrt.manifest import read_manifest

    folder = tmp_path / "copy"
    shutil.copytree(tiny_built_lora_ready_all, folder)
    data = json.loads((folder / "sdrt.json").read_text())
    records = data["components"]["unet"]["lora_branches"]
    conv1 = next(r for r in records if r["module"] == "down_blocks.0.resnets.0.conv1")
    assert conv1["kernel"] == [3, 3]
    branch = next(
        b
        for b in read_manifest(folder).components["unet"].lora_branches
        if b.module == conv1["module"]
    )
    assert branch.specs[0].shape == ("rank of down_blocks.0.resnets.0.conv1", 32, 3, 3)
    for record in records:  # folders written before kxk branches have no kernel: (1, 1)
        record.pop("kernel")
    (folder / "sdrt.json").write_text(json.dumps(data))
    assert {b.kernel for b in read_manifest(folder).components["unet"].lora_branches} == {(1, 1)}
    records[0]["kernel"] = [3]
    (folder / "sdrt.json").write_text(json.dumps(data))
    with pytest.raises(ModelFolderError, match=r"lora_branches\[0\]\.kernel: expected two"):
        read_manifest(folder)
