"""Random-weight SD models: tokenizer, configs, determinism, diffusers loading, the CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sdrt.export import clip_bpe, random_model
from sdrt.export.architectures import ARCHITECTURES, CLIP_VOCAB_SIZE
from sdrt.export.random_model import init_random_model
from sdrt.export.random_tiny_vae import init_random_tiny_vae

from sdrt import cli
from sdrt.errors import InputError

# Published parameter counts of the full-size components (counted from the Hub checkpoints).
SD15_UNET_PARAMS = 859_520_964
SD15_VAE_PARAMS = 83_653_863
SD15_TEXT_ENCODER_PARAMS = 123_060_480
SD21_UNET_PARAMS = 865_910_724
SD21_TEXT_ENCODER_PARAMS = 340_387_840
SDXL_UNET_PARAMS = 2_567_463_684
SDXL_TEXT_ENCODER_2_PARAMS = 694_659_840
PARAM_COUNT_RTOL = 1e-4

EXPECTED_PARAMS = {
    ("sd15", "unet"): SD15_UNET_PARAMS,
    ("sd15", "vae"): SD15_VAE_PARAMS,
    ("sd15", "text_encoder"): SD15_TEXT_ENCODER_PARAMS,
    ("sd21", "unet"): SD21_UNET_PARAMS,
    ("sd21", "vae"): SD15_VAE_PARAMS,
    ("sd21", "text_encoder"): SD21_TEXT_ENCODER_PARAMS,
    ("sdxl", "unet"): SDXL_UNET_PARAMS,
    ("sdxl", "vae"): SD15_VAE_PARAMS,
    ("sdxl", "text_encoder"): SD15_TEXT_ENCODER_PARAMS,
    ("sdxl", "text_encoder_2"): SDXL_TEXT_ENCODER_2_PARAMS,
}

PROMPT_A = "a red fox standing in the snow"
PROMPT_B = "an astronaut riding a horse on the moon"
TINY_SIZE = 64
STEPS = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("random_models")
    return {
        arch: init_random_model(arch, root / arch, seed=0)
        for arch in ("tiny", "tiny-inpaint", "tiny-xl")
    }


def _generate(pipe, prompt: str, seed: int = 0, **kwargs) -> np.ndarray:
    return pipe(
        prompt,
        num_inference_steps=STEPS,
        height=TINY_SIZE,
        width=TINY_SIZE,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    ).images


# --- tokenizer ------------------------------------------------------------------------------


def test_bytes_to_unicode_is_a_bijection_starting_with_bang():
    table = clip_bpe.bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert next(iter(table.values())) == "!"  # CLIP's id 0, SD 2's pad token


def test_vocab_layout_follows_clip():
    merges = clip_bpe.learn_merges(clip_bpe.builtin_corpus())
    vocab = clip_bpe.build_vocab(merges)
    assert len(merges) > 200  # words split into several, reused tokens
    assert vocab["!"] == 0
    assert vocab["!</w>"] == 256
    assert vocab[clip_bpe.BOS_TOKEN] == len(vocab) - 2
    assert vocab[clip_bpe.EOS_TOKEN] == len(vocab) - 1
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert all(a + b in vocab for a, b in merges)


def test_learn_merges_is_deterministic_and_frequency_ordered():
    text = "low lower lowest low low"
    merges = clip_bpe.learn_merges(text)
    assert merges == clip_bpe.learn_merges(text)
    assert merges[0] == ("l", "o")  # "lo" occurs in every word


@pytest.mark.parametrize("tokenizer_class", ["CLIPTokenizer", "CLIPTokenizerFast"])
def test_transformers_tokenizer_reads_the_folder(models, tokenizer_class):
    import transformers

    folder = models["tiny"] / "tokenizer"
    tokenizer = getattr(transformers, tokenizer_class).from_pretrained(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    text_config = json.loads((models["tiny"] / "text_encoder" / "config.json").read_text())

    ids_a = tokenizer(PROMPT_A).input_ids
    ids_b = tokenizer(PROMPT_B).input_ids
    assert ids_a != ids_b
    assert ids_a[0] == vocab[clip_bpe.BOS_TOKEN]
    assert ids_a[-1] == vocab[clip_bpe.EOS_TOKEN]
    # The unknown token is <|endoftext|>: it must appear only as the closing token.
    assert ids_a.count(tokenizer.unk_token_id) == 1
    assert len(set(ids_a[1:-1])) >= 6
    assert max(ids_a + ids_b) < text_config["vocab_size"] == len(vocab)
    # Words of the corpus are single tokens, with CLIP's end-of-word suffix.
    assert tokenizer.convert_ids_to_tokens(ids_a)[1:4] == ["a</w>", "red</w>", "fo"]
    assert tokenizer.decode(ids_a, skip_special_tokens=True) == PROMPT_A
    # Lower-casing and whitespace cleanup, as CLIP does.
    assert tokenizer("A  Red\tFOX").input_ids == tokenizer("a red fox").input_ids

    padded = tokenizer(PROMPT_A, padding="max_length", max_length=77).input_ids
    assert len(padded) == 77
    assert padded[-1] == vocab[clip_bpe.EOS_TOKEN]  # SD 1.x pads with <|endoftext|>


def test_plain_tokenizers_bpe_from_the_files_agrees_with_transformers(models):
    """The runtime reads vocab.json + merges.txt with `tokenizers` alone; same ids expected."""
    from tokenizers import Tokenizer
    from tokenizers import models as bpe_models
    from transformers import CLIPTokenizer

    from sdrt.tokenizer import clip_normalizer, clip_pre_tokenizer

    folder = models["tiny"] / "tokenizer"
    bpe = bpe_models.BPE.from_file(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        unk_token=clip_bpe.EOS_TOKEN,
        end_of_word_suffix=clip_bpe.END_OF_WORD,
        continuing_subword_prefix="",
    )
    plain = Tokenizer(bpe)
    plain.normalizer = clip_normalizer()
    plain.pre_tokenizer = clip_pre_tokenizer()
    reference = CLIPTokenizer.from_pretrained(folder)
    for prompt in (PROMPT_A, PROMPT_B, "Héllo  wörld 123, it's a zebra!"):
        expected = reference(prompt, add_special_tokens=False).input_ids
        assert plain.encode(prompt).ids == expected


def test_sdxl_second_tokenizer_pads_with_bang(models):
    from transformers import CLIPTokenizer

    tokenizer_2 = CLIPTokenizer.from_pretrained(models["tiny-xl"] / "tokenizer_2")
    padded = tokenizer_2(PROMPT_A, padding="max_length", max_length=77).input_ids
    assert tokenizer_2.pad_token == "!"
    assert padded[-1] == 0
    config = json.loads((models["tiny-xl"] / "tokenizer_2" / "special_tokens_map.json").read_text())
    assert config["pad_token"] == "!"


def test_folder_has_the_hub_layout(models):
    folder = models["tiny-xl"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    for name in ("tokenizer", "tokenizer_2"):
        assert sorted(p.name for p in (folder / name).iterdir()) == [
            "merges.txt",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "vocab.json",
        ]
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "text_encoder_2" / "model.safetensors").is_file()
    assert not list(folder.parent.glob(".*partial*"))


# --- weights --------------------------------------------------------------------------------


def test_same_seed_same_weights_and_global_rng_untouched(models, tmp_path):
    torch.manual_seed(1234)
    expected_next = torch.rand(4)
    torch.manual_seed(1234)
    again = init_random_model("tiny", tmp_path / "again", seed=0)
    other = init_random_model("tiny", tmp_path / "other", seed=1)
    assert torch.equal(torch.rand(4), expected_next)

    for weights in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        original = (models["tiny"] / weights).read_bytes()
        assert (again / weights).read_bytes() == original
        assert (other / weights).read_bytes() != original


def test_tiny_unet_has_no_all_zero_weights(models):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(models["tiny"] / "unet")
    zero = [n for n, p in unet.named_parameters() if p.dim() >= 2 and not p.any()]
    assert zero == []


def test_redraw_zero_weights_redraws_only_zero_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    kept = model[0].weight.clone()
    assert random_model.redraw_zero_weights(model) == ["1.weight"]
    assert model[1].weight.any()
    assert not model[1].bias.any()
    assert torch.equal(model[0].weight, kept)


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl"])
def test_full_size_configs_give_published_parameter_counts(arch):
    architecture = ARCHITECTURES[arch]
    for name, component in architecture.components.items():
        config = random_model.component_config(component, tokenizer_vocab_size=1000)
        if "vocab_size" in config:
            assert config["vocab_size"] == CLIP_VOCAB_SIZE
        with torch.device("meta"):
            model = random_model.build_component(component, config)
        count = sum(p.numel() for p in model.parameters())
        expected = EXPECTED_PARAMS[(arch, name)]
        assert count == pytest.approx(expected, rel=PARAM_COUNT_RTOL), (arch, name, count)


def test_lcm_sd15_is_sd15_with_a_guidance_embedding_projection():
    """LCM's guidance embedding (time_cond_proj_dim 256) adds one bias-free 256 -> 320
    projection into the time embedding of SD 1.5's U-Net; the rest is SD 1.5's."""
    lcm, sd15 = ARCHITECTURES["lcm-sd15"], ARCHITECTURES["sd15"]
    assert lcm.pipeline_class == "LatentConsistencyModelPipeline"
    assert lcm.scheduler["_class_name"] == "LCMScheduler"
    assert lcm.components["text_encoder"] == sd15.components["text_encoder"]
    assert lcm.components["vae"] == sd15.components["vae"]
    unet = lcm.components["unet"]
    config = random_model.component_config(unet, tokenizer_vocab_size=1000)
    with torch.device("meta"):
        model = random_model.build_component(unet, config)
    count = sum(p.numel() for p in model.parameters())
    assert count == SD15_UNET_PARAMS + 256 * 320


def test_lcm_sdxl_is_sdxl_with_a_guidance_embedding_projection():
    """latent-consistency/lcm-sdxl: SDXL base's U-Net plus the same bias-free 256 -> 320
    projection of the guidance embedding; its scheduler is LCMScheduler made from SDXL's
    config, in a StableDiffusionXLPipeline folder (diffusers has no LCM SDXL class)."""
    lcm, sdxl = ARCHITECTURES["lcm-sdxl"], ARCHITECTURES["sdxl"]
    assert lcm.pipeline_class == "StableDiffusionXLPipeline"
    assert lcm.scheduler["_class_name"] == "LCMScheduler"
    assert lcm.scheduler["original_inference_steps"] == 50
    assert lcm.scheduler["set_alpha_to_one"] is False  # SDXL's, kept by from_config
    for name in ("text_encoder", "text_encoder_2", "vae"):
        assert lcm.components[name] == sdxl.components[name]
    unet = lcm.components["unet"]
    config = random_model.component_config(unet, tokenizer_vocab_size=1000)
    with torch.device("meta"):
        model = random_model.build_component(unet, config)
    count = sum(p.numel() for p in model.parameters())
    assert count == SDXL_UNET_PARAMS + 256 * 320


@pytest.mark.parametrize(("turbo", "teacher"), [("sd-turbo", "sd21"), ("sdxl-turbo", "sdxl")])
def test_turbo_is_its_teacher_at_512_px_with_trailing_euler_and_its_recipe(turbo, teacher):
    """SD-Turbo and SDXL-Turbo: their teachers' networks (same components, classes and
    widths), at 512 px, on trailing Euler (a); their recipe named in model_index.json."""
    turbo_arch, teacher_arch = ARCHITECTURES[turbo], ARCHITECTURES[teacher]
    assert turbo_arch.components.keys() == teacher_arch.components.keys()
    for name, component in turbo_arch.components.items():
        ours, theirs = dict(component.config), dict(teacher_arch.components[name].config)
        assert {k: v for k, v in ours.items() if k != "sample_size"} == {
            k: v for k, v in theirs.items() if k != "sample_size"
        }
    assert turbo_arch.components["unet"].config["sample_size"] * 8 == 512
    assert turbo_arch.scheduler["timestep_spacing"] == "trailing"
    assert turbo_arch.scheduler["prediction_type"] == "epsilon"
    assert random_model.model_index(turbo_arch)["_sdrt_recipe"] == turbo
    assert "_sdrt_recipe" not in random_model.model_index(teacher_arch)


def test_full_size_configs_match_the_published_specifics():
    sd15, sd21, sdxl = (ARCHITECTURES[a] for a in ("sd15", "sd21", "sdxl"))
    assert sd15.components["unet"].config["sample_size"] == 64
    assert sd15.components["vae"].config["scaling_factor"] == 0.18215
    assert sd15.components["text_encoder"].config["hidden_act"] == "quick_gelu"
    assert sd15.scheduler["_class_name"] == "PNDMScheduler"
    assert sd15.scheduler["steps_offset"] == 1
    assert sd21.scheduler["prediction_type"] == "v_prediction"
    assert sd21.components["unet"].config["sample_size"] == 96
    assert sd21.components["unet"].config["use_linear_projection"] is True
    assert sd21.tokenizers["tokenizer"].pad_token == "!"
    assert sdxl.components["vae"].config["force_upcast"] is True
    assert sdxl.components["unet"].config["transformer_layers_per_block"] == [1, 2, 10]
    assert sdxl.pipeline_options["force_zeros_for_empty_prompt"] is True
    assert sdxl.tokenizers["tokenizer_2"].pad_token == "!"


# --- diffusers pipelines --------------------------------------------------------------------


def test_tiny_is_sensitive_to_its_prompt(models):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(models["tiny"])
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == TINY_SIZE

    ids = [
        pipe.tokenizer(p, padding="max_length", max_length=77).input_ids
        for p in (PROMPT_A, PROMPT_B)
    ]
    assert ids[0] != ids[1]
    with torch.no_grad():
        embeddings = [pipe.text_encoder(torch.tensor([i]))[0] for i in ids]
    assert (embeddings[0] - embeddings[1]).abs().max() > 1e-2

    image_a = _generate(pipe, PROMPT_A)
    image_b = _generate(pipe, PROMPT_B)
    image_a_again = _generate(pipe, PROMPT_A)
    assert image_a.shape == (1, TINY_SIZE, TINY_SIZE, 3)
    assert np.isfinite(image_a).all()
    assert np.array_equal(image_a, image_a_again)
    assert np.abs(image_a - image_b).max() > 1e-2


def test_tiny_inpaint_runs_in_the_inpaint_pipeline(models):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(models["tiny-inpaint"])
    assert pipe.unet.config.in_channels == 9
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((1, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32))
    mask = torch.zeros((1, 1, TINY_SIZE, TINY_SIZE))
    mask[..., 16:48, 16:48] = 1.0
    result = _generate(pipe, PROMPT_A, image=image, mask_image=mask)
    assert result.shape == (1, TINY_SIZE, TINY_SIZE, 3)
    assert np.isfinite(result).all()


def test_tiny_xl_runs_in_the_xl_pipeline_and_prompt_matters(models):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(models["tiny-xl"])
    assert pipe.vae_scale_factor == 8
    image_a = _generate(pipe, PROMPT_A)
    image_b = _generate(pipe, PROMPT_B)
    assert image_a.shape == (1, TINY_SIZE, TINY_SIZE, 3)
    assert np.isfinite(image_a).all()
    assert np.abs(image_a - image_b).max() > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "pipeline_class"),
    [
        ("sd15", "StableDiffusionPipeline"),
        ("sd21", "StableDiffusionPipeline"),
        ("sdxl", "StableDiffusionXLPipeline"),
    ],
)
def test_full_size_model_loads_in_diffusers(arch, pipeline_class, tmp_path):
    import diffusers

    folder = init_random_model(arch, tmp_path / arch)
    # Loaded in fp16 to halve the memory (SDXL is 14 GB in fp32); the check is that it loads.
    pipe = getattr(diffusers, pipeline_class).from_pretrained(folder, dtype=torch.float16)
    counts = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ARCHITECTURES[arch].components
    }
    for name, count in counts.items():
        assert count == pytest.approx(EXPECTED_PARAMS[(arch, name)], rel=PARAM_COUNT_RTOL)
    assert pipe.tokenizer(PROMPT_A).input_ids != pipe.tokenizer(PROMPT_B).input_ids


# --- robustness and the CLI -----------------------------------------------------------------


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(random_model, "_write_component", fail)
    with pytest.raises(KeyboardInterrupt):
        init_random_model("tiny", tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_force(tmp_path):
    out = tmp_path / "model"
    init_random_model("tiny", out, seed=1)
    (out / "old.txt").write_text("old")
    with pytest.raises(InputError, match="already exists; pass --force to replace it"):
        init_random_model("tiny", out)
    assert (out / "old.txt").exists()
    init_random_model("tiny", out, force=True)
    assert not (out / "old.txt").exists()
    assert (out / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_force_never_replaces_a_folder_that_is_not_a_model(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    before = out.stat().st_mode
    with pytest.raises(InputError, match="is not a model folder .no model_index.json.; refusing"):
        init_random_model("tiny", out, force=True)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me" and out.stat().st_mode == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_cli_force_in_the_current_folder_refuses_cleanly(capsys, tmp_path, monkeypatch):
    (tmp_path / "precious.txt").write_text("keep me")
    monkeypatch.chdir(tmp_path)
    err = _cli_error(capsys, ["init-model", "tiny", "--random-weights", ".", "--force"])
    assert err == (
        f"sdrt init-model: error: output {str(tmp_path)!r} exists and is not a model folder "
        "(no model_index.json); refusing to replace it"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]


def test_cli_force_replaces_the_model_in_the_current_folder(capsys, tmp_path, monkeypatch):
    init_random_tiny_vae("tiny-taesd", tmp_path / "vae", seed=1)
    monkeypatch.chdir(tmp_path / "vae")
    argv = ["init-model", "tiny-taesd", "--random-weights", ".", "--force", "--seed", "2"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "vae" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = init_random_model("tiny", tmp_path / "model")
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert modes["unet/diffusion_pytorch_model.safetensors"] == 0o644  # safetensors: 0o600
    assert {m for p, m in modes.items() if (out / p).is_dir()} == {0o755}
    assert {m for p, m in modes.items() if (out / p).is_file()} == {0o644}


def test_folder_filled_by_another_process_meanwhile_is_not_overwritten(tmp_path, monkeypatch):
    out = tmp_path / "model"
    write_model = random_model._write_model

    def write_while_another_process_fills_out(*args):
        write_model(*args)
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")

    monkeypatch.setattr(random_model, "_write_model", write_while_another_process_fills_out)
    with pytest.raises(InputError, match="filled by another process"):
        init_random_model("tiny", out)
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_bad_seed_is_rejected(tmp_path):
    with pytest.raises(InputError, match="seed must be a non-negative integer, got -1"):
        init_random_model("tiny", tmp_path / "model", seed=-1)


def _cli_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_unknown_arch_lists_choices(capsys, tmp_path):
    err = _cli_error(capsys, ["init-model", "sd99", "--random-weights", str(tmp_path / "m")])
    assert err == (
        "sdrt init-model: error: unknown architecture 'sd99'; "
        "expected one of: sd15, lcm-sd15, sd21, sdxl, tiny, tiny-inpaint, tiny-lcm, tiny-xl, "
        "lcm-sdxl, tiny-lcm-xl, sd-turbo, sdxl-turbo, tiny-turbo, tiny-xl-turbo, taesd, taesdxl, "
        "tiny-taesd"
    )
    assert not (tmp_path / "m").exists()


def test_cli_requires_random_weights(capsys):
    err = _cli_error(capsys, ["init-model", "tiny"])
    assert "pass --random-weights OUT_DIR" in err


def test_cli_refuses_existing_folder_without_force(capsys, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "x").write_text("x")
    err = _cli_error(capsys, ["init-model", "tiny", "--random-weights", str(out)])
    assert err == (
        f"sdrt init-model: error: output {str(out)!r} exists and is not a model folder "
        "(no model_index.json); refusing to replace it"
    )


def test_cli_makes_the_model(capsys, tmp_path):
    out = tmp_path / "model"
    assert cli.main(["init-model", "tiny", "--random-weights", str(out), "--seed", "3"]) == 0
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusionPipeline"
    )
    assert f"to {out}" in capsys.readouterr().err


def test_cli_module_imports_no_torch():
    """`sdrt --help` and the other commands must not pay for torch through init-model."""
    code = (
        "import sys, sdrt.commands.init_model, sdrt.export.random_model; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
