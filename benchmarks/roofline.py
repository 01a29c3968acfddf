"""How close a U-Net step comes to the machine's matmul peak.

FLOPs of one U-Net call are counted once per (U-Net config, shape) with torch's
``FlopCounterMode`` on a model built on the meta device (no weights, no compute: the counter
sees every matmul and convolution the real call runs) and stored in the cache. The peak is
measured here, now, with the same thread count: the best fp32 matmul rate of numpy's BLAS
and torch on n x n matrices. ``fraction = flops / step_time / peak``.

Both measurements run in their own process (``jobs.py``), so neither torch nor a BLAS
thread pool lives in the harness or in a contender's process.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

# Text sequence length of every CLIP text encoder SD uses.
TEXT_TOKENS = 77
MATMUL_REPEATS = 3


def _unet_inputs(config: dict[str, Any], batch: int, height: int, width: int, scale: int):
    """Meta-device inputs of one U-Net call, SDXL's added conditions included."""
    import torch

    latent_shape = (batch, config["in_channels"], height // scale, width // scale)
    inputs: dict[str, Any] = {
        "sample": torch.empty(latent_shape, device="meta"),
        "timestep": torch.tensor(999.0, device="meta"),
        "encoder_hidden_states": torch.empty(
            (batch, TEXT_TOKENS, config["cross_attention_dim"]), device="meta"
        ),
    }
    if config.get("addition_embed_type") == "text_time":
        time_ids = 6  # original size, crop top-left, target size
        text_embeds = config["projection_class_embeddings_input_dim"] - (
            time_ids * config["addition_time_embed_dim"]
        )
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.empty((batch, text_embeds), device="meta"),
            "time_ids": torch.empty((batch, time_ids), device="meta"),
        }
    return inputs


def count_unet_flops(model_dir: Path, batch: int, height: int, width: int) -> int:
    """FLOPs (multiply + add counted as 2) of one U-Net call on a batch of latents."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = json.loads((model_dir / "unet" / "config.json").read_text())
    vae_config = json.loads((model_dir / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae_config["block_out_channels"]) - 1)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    inputs = _unet_inputs(config, batch, height, width, scale)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(**inputs)
    return int(counter.get_total_flops())


def flops_cache_key(model_dir: Path, batch: int, height: int, width: int) -> str:
    import torch

    unet_config = (model_dir / "unet" / "config.json").read_bytes()
    vae_config = (model_dir / "vae" / "config.json").read_bytes()
    digest = hashlib.sha256(unet_config + vae_config)
    digest.update(f"{batch} {height} {width} torch {torch.__version__}".encode())
    return digest.hexdigest()[:16]


def stored_unet_flops(
    model_dir: Path, batch: int, height: int, width: int, cache_dir: Path
) -> dict[str, Any]:
    """``count_unet_flops`` counted once and stored under ``cache_dir`` by its key."""
    key = flops_cache_key(model_dir, batch, height, width)
    path = cache_dir / "flops" / f"{key}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return {**stored, "from_cache": True}
    record = {
        "key": key,
        "flops": count_unet_flops(model_dir, batch, height, width),
        "batch": batch,
        "height": height,
        "width": width,
        "method": "torch.utils.flop_counter.FlopCounterMode, meta device",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2))
    temporary.replace(path)
    return {**record, "from_cache": False}


def _best_rate(multiply, n: int) -> float:
    multiply()  # first call pays for thread-pool start and page faults
    best = float("inf")
    for _ in range(MATMUL_REPEATS):
        start = time.perf_counter()
        multiply()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def measure_peak_matmul(n: int, threads: int) -> dict[str, Any]:
    """Best fp32 n x n matmul rate (FLOP/s) of numpy and of torch, with ``threads`` threads.

    The thread count of numpy's BLAS is fixed by the environment the process started with.
    """
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    numpy_rate = _best_rate(lambda: a @ b, n)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with torch.inference_mode():
        torch_rate = _best_rate(lambda: ta @ tb, n)
    return {
        "peak_flops_per_s": max(numpy_rate, torch_rate),
        "numpy_flops_per_s": numpy_rate,
        "torch_flops_per_s": torch_rate,
        "matmul_size": n,
        "threads": threads,
        "repeats": MATMUL_REPEATS,
        "method": f"best of {MATMUL_REPEATS} fp32 {n}x{n} @ {n}x{n} matmuls, numpy and torch",
    }


def median_peak(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One peak from several ``measure_peak_matmul`` samples taken during the runs: the
    median of each rate, the samples kept."""
    import statistics

    first = samples[0]
    rates = {
        key: statistics.median(sample[key] for sample in samples)
        for key in ("peak_flops_per_s", "numpy_flops_per_s", "torch_flops_per_s")
    }
    return {
        **rates,
        "samples_flops_per_s": [sample["peak_flops_per_s"] for sample in samples],
        "matmul_size": first["matmul_size"],
        "threads": first["threads"],
        "repeats": first["repeats"],
        "method": f"median of {len(samples)} samples taken between the measured rounds and "
        f"after them, each the {first['method']}",
    }


def achieved(flops_per_call: int, seconds_per_call: float, peak_flops_per_s: float) -> dict:
    rate = flops_per_call / seconds_per_call
    return {"achieved_flops_per_s": rate, "fraction_of_peak": rate / peak_flops_per_s}
