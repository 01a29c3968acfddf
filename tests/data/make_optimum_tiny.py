"""Make tests/data/optimum_tiny/: the `tiny` random model exported by Hugging Face Optimum.

Run it with the interpreter of Optimum's own venv (``sdrt bench --setup-optimum`` makes
``.bench-venvs/optimum``), on a diffusers folder made by sdrt's main venv:

    .venv/bin/sdrt init-model tiny --random-weights /tmp/tiny --seed 0
    .bench-venvs/optimum/bin/python tests/data/make_optimum_tiny.py /tmp/tiny tests/data/optimum_tiny

Optimum is called in process (its ``main_export``, what ``optimum-cli export onnx`` runs),
on the CPU, in fp32, with its own validation against PyTorch. The versions that made the
folder are written to its README.md.

The transformers Optimum pins (4.x) reads CLIP text encoders saved by sdrt's transformers
(5.x) as missing every weight (5.x drops the ``text_model.`` key prefix) and silently
initialises them at random; so the source is exported from a copy whose text encoder keys
carry the prefix again, and the export stops if any weight is still missing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

VERSIONED = ("optimum", "optimum-onnx", "torch", "diffusers", "transformers", "onnx", "onnxruntime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the diffusers folder (sdrt init-model tiny)")
    parser.add_argument("output", type=Path, help="the folder to write (replaced)")
    args = parser.parse_args()

    from optimum.exporters.onnx import main_export

    if args.output.exists():
        shutil.rmtree(args.output)
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "source"
        shutil.copytree(args.source, source)
        for text_encoder in sorted(source.glob("text_encoder*")):
            _prefix_text_encoder_keys(text_encoder)
        main_export(
            model_name_or_path=str(source),
            output=args.output,
            task="text-to-image",
            device="cpu",
            do_validation=True,
        )
    (args.output / "README.md").write_text(_readme(args.source), encoding="utf-8")


def _prefix_text_encoder_keys(folder: Path, prefix: str = "text_model.") -> None:
    """Rewrite transformers 5.x's CLIP keys in the 4.x layout where 4.x misses weights;
    fail if it still misses any."""
    import transformers
    from safetensors.torch import load_file, save_file

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model_class = getattr(transformers, config["architectures"][0])
    _, info = model_class.from_pretrained(folder, output_loading_info=True)
    if info["missing_keys"]:
        weights = folder / "model.safetensors"
        tensors = load_file(weights)
        fixed = {k if k.startswith(prefix) else prefix + k: v for k, v in tensors.items()}
        save_file(fixed, weights, metadata={"format": "pt"})
        _, info = model_class.from_pretrained(folder, output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise SystemExit(f"{folder.name} weights do not load in transformers 4.x: {info}")


def _readme(source: Path) -> str:
    versions = "\n".join(f"- {name} {_version(name)}" for name in VERSIONED)
    weights = "\n".join(
        f"- `{path.relative_to(source).as_posix()}` sha256 `{_sha256(path)}`"
        for path in sorted(source.glob("*/*.safetensors"))
    )
    index = json.loads((source / "model_index.json").read_text(encoding="utf-8"))
    return f"""# optimum_tiny

The `tiny` random-weight model (`sdrt init-model tiny --random-weights DIR --seed 0`, a
{index["_class_name"]} with SD 1.5's architecture at tiny widths) exported to ONNX by
Hugging Face Optimum's `main_export` (what `optimum-cli export onnx --task text-to-image`
runs), on the CPU, fp32. Made by `tests/data/make_optimum_tiny.py`; the tests adopt it
(`sdrt adopt`) and compare its images with sdrt's own build of the same weights.

Versions that made it:

{versions}

The source weights it was exported from (the tests check that `init-model tiny --seed 0`
still makes these):

{weights}

The text encoders' weights were first re-keyed for the transformers 4.x that Optimum pins
(transformers 5.x, which made them, drops the `text_model.` prefix that 4.x needs; without
this, 4.x initialises them at random and says so in a warning only).

Its size, 8.4 MB, is over the ~3 MB aimed at for test data: the tiny architecture's U-Net is
7 MB in fp32 ONNX. It is kept at that architecture so that the tests compare it with the
`tiny` fixture that the rest of the suite builds, rather than a second, smaller model.
"""


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    main()
