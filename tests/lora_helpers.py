"""Random LoRA files for the tests, written the ways people get them: diffusers' own
``save_lora_weights`` (PEFT keys) and the kohya/A1111 layout (converted keys + alphas), and
the diffusers oracle that loads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# PEFT's random init (init_lora_weights=False) changes the tiny model a lot already; much
# stronger deltas make attention logits so large that float32 rounding decides the image.
DELTA_SCALE = 0.5


def peft_state_dicts(source: Path, seed: int, rank: int = 4, text_encoder: bool = True):
    """(unet, text_encoder or None) LoRA state dicts in diffusers' key layout, random
    factors large enough that an adapter visibly changes the image."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS, init_lora_weights=False)
    )
    unet = get_peft_model_state_dict(pipe.unet)  # lora_A / lora_B keys
    text = None
    if text_encoder:
        # PEFT directly: transformers 5's add_adapter asks for a newer PEFT than diffusers'.
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS, init_lora_weights=False
        )
        inject_adapter_in_model(config, pipe.text_encoder)
        text = get_peft_model_state_dict(pipe.text_encoder)
    unet = {k: v * DELTA_SCALE for k, v in unet.items()}
    text = None if text is None else {k: v * DELTA_SCALE for k, v in text.items()}
    return unet, text


def write_peft_file(folder: Path, source: Path, seed: int, **options) -> Path:
    """A LoRA folder as diffusers' save_lora_weights writes it; returns the file."""
    from diffusers import StableDiffusionPipeline

    unet, text = peft_state_dicts(source, seed, **options)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=unet, text_encoder_lora_layers=text, safe_serialization=True
    )
    return folder / "pytorch_lora_weights.safetensors"


def write_peft_file_with_metadata(
    folder: Path, source: Path, seed: int, unet_config: dict, text_config: dict
) -> Path:
    """A LoRA folder as diffusers' save_lora_weights writes it with peft's LoraConfig
    (``LoraConfig(**unet_config).to_dict()``, ...) as ``lora_adapter_metadata``, the way
    peft-trained files carry their lora_alpha; returns the file."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig

    unet, text = peft_state_dicts(source, seed)
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=unet,
        text_encoder_lora_layers=text,
        unet_lora_adapter_metadata=LoraConfig(target_modules=UNET_TARGETS, **unet_config).to_dict(),
        text_encoder_lora_adapter_metadata=LoraConfig(
            target_modules=TEXT_TARGETS, **text_config
        ).to_dict(),
        safe_serialization=True,
    )
    return folder / "pytorch_lora_weights.safetensors"


def kohya_key(key: str) -> str:
    """diffusers' 'unet.<m>.lora_A.weight' -> kohya's 'lora_unet_<m_>.lora_down.weight'."""
    component, _, rest = key.partition(".")
    module, _, part = rest.partition(".lora_")
    if component == "text_encoder" and not module.startswith("text_model."):
        module = "text_model." + module  # kohya names CLIP modules as transformers < 5
    prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[component]
    kind = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[part]
    return f"{prefix}{module.replace('.', '_')}.{kind}"


def write_kohya_file(path: Path, source: Path, seed: int, alpha: float = 2.0, **options) -> Path:
    """The same kind of adapter in kohya's layout, with an alpha per module (scale alpha/rank)."""
    import torch
    from safetensors.torch import save_file

    unet, text = peft_state_dicts(source, seed, **options)
    tensors = {}
    prefixed = {f"unet.{k}": v for k, v in unet.items()}
    prefixed |= {f"text_encoder.{k}": v for k, v in (text or {}).items()}
    for key, value in prefixed.items():
        converted = kohya_key(key)
        tensors[converted] = value.contiguous()
        tensors[converted.rsplit(".", 2)[0] + ".alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path


# The scheduler diffusers_images sets, for sdrt's side of a comparison.
SCHEDULER = "EulerDiscreteScheduler"


def sdrt_images(pipe, latents, prompt: str, steps: int = 3, **kw):
    """sdrt's float32 NHWC images for what diffusers_images makes (the same scheduler)."""
    return pipe(
        prompt,
        num_inference_steps=steps,
        latents=latents,
        output_type="np",
        scheduler=SCHEDULER,
        **kw,
    ).images


def diffusers_images(source: Path, loras, prompt: str, latents: np.ndarray, steps: int = 3, **kw):
    """diffusers' StableDiffusionPipeline with ``loras`` [(file, adapter_name)] loaded and
    set_adapters(names, weights) applied; float32 NHWC images in [0, 1]."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    weights = kw.pop("adapter_weights", None)
    for file, name in loras:
        pipe.load_lora_weights(str(file), adapter_name=name)
    if loras:
        pipe.set_adapters([n for _, n in loras], adapter_weights=weights)
    with torch.no_grad():
        out = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=7.5,
            latents=torch.from_numpy(latents),
            output_type="np",
            height=latents.shape[2] * 8,
            width=latents.shape[3] * 8,
            **kw,
        )
    return out.images


def xl_state_dicts(source: Path, seed: int, rank: int = 4) -> dict[str, dict]:
    """{component: LoRA state dict in diffusers' key layout} for an SDXL folder's U-Net and
    both text encoders, random factors as in peft_state_dicts."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionXLPipeline.from_pretrained(source)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS, init_lora_weights=False)
    )
    dicts = {"unet": get_peft_model_state_dict(pipe.unet)}
    for name in ("text_encoder", "text_encoder_2"):
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS, init_lora_weights=False
        )
        inject_adapter_in_model(config, getattr(pipe, name))
        dicts[name] = get_peft_model_state_dict(getattr(pipe, name))
    return {c: {k: v * DELTA_SCALE for k, v in d.items()} for c, d in dicts.items()}


def sgm_kohya_module(diffusers_module: str, unet_config: dict) -> str:
    """A diffusers U-Net module name as kohya's SDXL scripts name it: the original (SGM/LDM)
    U-Net's module, through the single-file exporter's diffusers -> LDM table, '.' -> '_'."""
    from sdrt.export.ldm_keys import UNET_PREFIX, unet_to_ldm

    (ldm_key,) = unet_to_ldm({diffusers_module + ".weight": None}, unet_config)
    module = ldm_key[len(UNET_PREFIX) : -len(".weight")]
    return "lora_unet_" + module.replace(".", "_")


def write_sgm_kohya_file(path: Path, source: Path, seed: int, alpha: float = 3.0) -> Path:
    """A random SDXL LoRA as kohya's sd-scripts write it: U-Net modules in the SGM layout
    (``lora_unet_input_blocks_4_1_…``), ``lora_te1_``/``lora_te2_text_model_…`` for the
    text encoders, lora_down/lora_up and an alpha per module."""
    import json

    import torch
    from safetensors.torch import save_file

    unet_config = json.loads((source / "unet" / "config.json").read_text())
    prefixes = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    kinds = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}
    tensors = {}
    for component, state in xl_state_dicts(source, seed).items():
        for key, value in state.items():
            module, _, part = key.partition(".lora_")
            if component == "unet":
                name = sgm_kohya_module(module, unet_config)
            else:
                if not module.startswith("text_model."):
                    module = "text_model." + module  # kohya names CLIP as transformers < 5
                name = prefixes[component] + module.replace(".", "_")
            tensors[f"{name}.{kinds[part]}"] = value.contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path


def diffusers_xl_images(source: Path, lora: Path | None, prompt: str, latents, steps: int = 3):
    """diffusers' StableDiffusionXLPipeline (Euler) with ``lora`` loaded by load_lora_weights;
    float32 NHWC images in [0, 1], and the components the adapter went into."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(source)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="sgm")
    with torch.no_grad():
        out = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=7.5,
            latents=torch.from_numpy(latents),
            output_type="np",
            height=latents.shape[2] * 8,
            width=latents.shape[3] * 8,
        )
    return out.images, sorted(pipe.get_list_adapters())


def peft_and_kohya_files(folder: Path, source: Path) -> dict[str, Path]:
    """A PEFT folder (seed 1) and a kohya file (seed 2, alpha 3) for ``source``."""
    return {
        "peft": write_peft_file(folder / "peft", source, seed=1),
        "kohya": write_kohya_file(folder / "kohya.safetensors", source, seed=2, alpha=3.0),
    }


# What diffusers' LCM-LoRA training scripts (train_lcm_distill_lora_sd*.py) target by
# default, as LCM-LoRA and TCD-LoRA were trained: the transformer blocks, and the ResNets'
# 3x3 convs, shortcuts and time projections, and the samplers' 3x3 convs.
LCM_LORA_TARGETS = [
    *UNET_TARGETS,
    "ff.net.0.proj",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
]
# Some distillation LoRAs (and LoCon) train the modules outside the blocks as well.
WHOLE_UNET_TARGETS = [*LCM_LORA_TARGETS, "conv_in", "conv_out", "linear_1", "linear_2"]


def distill_lora_state_dict(source: Path, seed: int, targets, rank: int = 4, xl: bool = False):
    """A U-Net LoRA state dict (diffusers' keys, no ``unet.`` prefix) made by peft on
    ``source``'s U-Net with ``targets``, random nonzero factors (conv ones included)."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    kind = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    pipe = kind.from_pretrained(source, **({} if xl else {"safety_checker": None}))
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    )
    state = get_peft_model_state_dict(pipe.unet)
    return {k: v * DELTA_SCALE for k, v in state.items()}


def write_distill_peft_file(folder: Path, source: Path, seed: int, targets, xl: bool = False):
    """A LoRA folder as diffusers' save_lora_weights writes it (``unet.<module>.lora_A``),
    with conv factors of shape (rank, in, 3, 3) / (out, rank, 1, 1); returns the file."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    state = distill_lora_state_dict(source, seed, targets, xl=xl)
    kind = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    kind.save_lora_weights(folder, unet_lora_layers=state, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def write_distill_kohya_file(path: Path, source: Path, seed: int, targets) -> Path:
    """The same kind of adapter converted by diffusers' convert_state_dict_to_kohya (the
    ``lora_unet_<module>.lora_down/up`` + alpha layout LCM-LoRA's files use)."""
    from diffusers.utils import convert_state_dict_to_kohya
    from safetensors.torch import save_file

    state = distill_lora_state_dict(source, seed, targets)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(path))
    return path
