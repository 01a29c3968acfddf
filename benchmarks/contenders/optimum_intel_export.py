"""Optimum-Intel's own OpenVINO folder of a diffusers source, for the ``optimum-intel``
contenders: made once, untimed, by the harness (models.prepare_export), in Optimum-Intel's
virtualenv.

- fp32: ``OVDiffusionPipeline.from_pretrained(SOURCE, export=True)``, saved: the IR every
  Optimum-Intel user (and FastSD CPU's OpenVINO models) starts from.
- ``--int8``: Optimum-Intel's own NNCF quantization, its hybrid mode for diffusion models:
  the U-Net fully quantized (int8 activations and weights, calibrated on U-Net inputs it
  collects by running the pipeline), the other models' weights in int8. Its calibration
  wants prompts; with no network here they are made locally (CALIBRATION_PROMPTS), passed as
  the list of strings Optimum-Intel takes for ``dataset``.
- ``--tiny-vae FOLDER``: Optimum-Intel has no exporter for diffusers' ``AutoencoderTiny``
  (TAESD). FastSD CPU runs TAESD under Optimum-Intel by loading an OpenVINO IR of TAESD's
  decoder as the pipeline's ``vae_decoder``; this does the same: OpenVINO's own
  ``convert_model`` of the decoder, saved over ``vae_decoder/`` with the tiny VAE's config
  (its scaling factor, 1.0, is what the pipeline divides the latents by).

Run as ``python -m sdrt.benchmarks.contenders.optimum_intel_export [--int8] [--tiny-vae
FOLDER] SOURCE OUT``; OUT/optimum-intel-export.json records what was made.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from itertools import product
from pathlib import Path
from typing import Any

INT8 = "--int8"
TINY_VAE = "--tiny-vae"
RECORD = "optimum-intel-export.json"
# A CLIP text encoder's first weight, as newer transformers name it (see _readable_source).
UNPREFIXED_KEY = "embeddings.token_embedding.weight"
# U-Net calls whose inputs calibrate the int8 U-Net: Optimum-Intel's default is 200, which
# at 512 px and 2 cores is most of an hour of fp32 pipeline runs; 64 calls are 16 LCM
# images of 4 steps.
CALIBRATION_SAMPLES = 64
_SUBJECTS = (
    "a red fox in fresh snow",
    "an astronaut riding a horse on the moon",
    "a bowl of ramen on a wooden table",
    "a lighthouse on a rocky coast at dusk",
    "a portrait of an old fisherman",
    "a city street in the rain at night",
    "a cat sleeping on a windowsill",
    "a mountain lake with pine trees",
)
_STYLES = (
    "photograph, detailed, 4k",
    "oil painting",
    "watercolor illustration",
    "cinematic lighting, 35 mm",
)
# Varied prompts in place of a captions dataset (there is no network to fetch one).
CALIBRATION_PROMPTS = tuple(f"{s}, {t}" for s, t in product(_SUBJECTS, _STYLES))


def export(source: Path, out: Path, int8: bool, tiny_vae: Path | None) -> dict[str, Any]:
    from optimum.intel import OVDiffusionPipeline, OVWeightQuantizationConfig

    record: dict[str, Any] = {"source": str(source), "precision": "fp32", "vae": "as exported"}
    quantization = None
    if int8:
        quantization = OVWeightQuantizationConfig(
            bits=8, dataset=list(CALIBRATION_PROMPTS), num_samples=CALIBRATION_SAMPLES
        )
        record.update(
            precision="int8",
            quantization="Optimum-Intel hybrid: U-Net int8 (NNCF, calibrated), others int8 weights",
            calibration={"prompts": len(CALIBRATION_PROMPTS), "unet_calls": CALIBRATION_SAMPLES},
        )
    with tempfile.TemporaryDirectory() as staging:
        readable = _readable_source(source, Path(staging))
        if readable != source:
            record["text_encoder"] = "weights renamed with the text_model. prefix"
        pipe = OVDiffusionPipeline.from_pretrained(
            str(readable), export=True, compile=False, quantization_config=quantization
        )
        pipe.save_pretrained(str(out))
    record["pipeline"] = type(pipe).__name__
    if tiny_vae is not None:
        _replace_vae_decoder(tiny_vae, out)
        record["vae"] = f"tiny: {tiny_vae} (decoder converted with openvino.convert_model)"
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _readable_source(source: Path, staging: Path) -> Path:
    """``source`` as the transformers of this venv reads it. Newer transformers (sdrt's
    venv) save a ``CLIPTextModel``'s weights without the ``text_model.`` prefix of their
    names; the transformers Optimum-Intel 2.2.0 pins (< 5.6) does not map them back, and
    would export a text encoder of freshly initialised weights. Where a text encoder is saved
    so, a staging copy in ``staging`` (the other files linked) has the prefixed names."""
    from safetensors.torch import load_file, save_file

    renamed = {}
    for name in ("text_encoder", "text_encoder_2"):
        path = source / name / "model.safetensors"
        if not path.is_file():
            continue  # none, or sharded: left as saved
        tensors = load_file(str(path))
        if UNPREFIXED_KEY in tensors:
            renamed[name] = {
                key if key.startswith("text_projection") else f"text_model.{key}": tensor
                for key, tensor in tensors.items()
            }
    if not renamed:
        return source
    for entry in source.iterdir():
        if entry.name not in renamed:
            (staging / entry.name).symlink_to(entry.resolve())
            continue
        folder = staging / entry.name
        folder.mkdir()
        for file in entry.iterdir():
            if file.name != "model.safetensors":
                (folder / file.name).symlink_to(file.resolve())
        save_file(renamed[entry.name], str(folder / "model.safetensors"), {"format": "pt"})
    return staging


def _replace_vae_decoder(tiny_vae: Path, out: Path) -> None:
    """TAESD's decoder as the pipeline's ``vae_decoder``: an IR with Optimum-Intel's
    input and output names (``latent_sample`` -> ``sample``), and the tiny VAE's config."""
    import openvino
    import torch
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny.from_pretrained(str(tiny_vae), torch_dtype=torch.float32).eval()

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vae = vae

        def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(latent_sample, return_dict=False)[0]

    channels = vae.config.latent_channels
    example = torch.zeros(1, channels, 8, 8)
    with torch.no_grad():
        model = openvino.convert_model(
            Decoder(), example_input=example, input=[(-1, channels, -1, -1)]
        )
    model.outputs[0].get_tensor().set_names({"sample"})
    model.inputs[0].get_tensor().set_names({"latent_sample"})
    folder = out / "vae_decoder"
    for old in folder.glob("openvino_model.*"):
        old.unlink()
    openvino.save_model(model, str(folder / "openvino_model.xml"), compress_to_fp16=False)
    (folder / "config.json").write_text(vae.to_json_string())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="optimum_intel_export")
    parser.add_argument(INT8, action="store_true")
    parser.add_argument(TINY_VAE, type=Path)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    record = export(args.source, args.out, args.int8, args.tiny_vae)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
