"""What run-time LoRA costs, in one process: switching adapters against ``Pipeline.load``,
and a U-Net step with an adapter active against a build with plain constant weights.

    python -m sdrt.benchmarks.studies.lora_cost READY_FOLDER PLAIN_FOLDER [--size 256] [--rank 16]

READY_FOLDER is built with ``--lora-ready`` (or ``--lora-ready all``), PLAIN_FOLDER from the same source without
(the "fused build": every weight a constant). The adapters are random,
PEFT-keyed, rank ``--rank``, on every LoRA-ready module of the U-Net and text encoder (the
most a LoRA can touch). Steps are timed in interleaved rounds, so that the load of a shared
machine falls on all of them alike; medians (and the load average) are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import sdrt


def random_lora(pipe, path: Path, rank: int, seed: int) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for component, branches in _adaptable(pipe).items():
        for branch in branches:
            key = f"{component}.{branch.module}"
            down = rng.standard_normal((rank, branch.features_in), np.float32) * 0.01
            up = rng.standard_normal((branch.features_out, rank), np.float32) * 0.01
            if branch.spatial:  # a kxk conv's LoRA as peft writes it (--lora-ready all)
                down = down.reshape(rank, *branch.down_shape[1:])
                up = up.reshape(*up.shape, 1, 1)
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = down, up
    save_file(tensors, str(path))
    return path


def _adaptable(pipe) -> dict:
    """{component: its LoRA branches} for the components a LoRA can touch."""
    return {n: c.lora_branches for n, c in pipe.manifest.components.items() if c.lora_branches}


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _unet_feeds(pipe, size: int, batch: int) -> dict:
    rng = np.random.default_rng(0)
    latent = size // pipe.manifest.vae_scale_factor
    session = pipe.session("unet")
    width = {s.name: s for s in session.inputs}["encoder_hidden_states"].shape[2]
    return {
        "sample": rng.standard_normal((batch, 4, latent, latent), np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((batch, 77, width), np.float32),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ready", type=Path)
    parser.add_argument("plain", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)

    sdrt.Pipeline.load(args.ready, backend="ort-cpu")  # saved ORT graphs written, files hashed
    load_s = _median_seconds(lambda: sdrt.Pipeline.load(args.ready, backend="ort-cpu"), 3)
    pipe = sdrt.Pipeline.load(args.ready, backend="ort-cpu")
    scratch = Path(tempfile.mkdtemp())
    files = [random_lora(pipe, scratch / f"l{i}.safetensors", args.rank, i) for i in range(2)]
    t0 = time.perf_counter()
    pipe.load_lora_weights(files[0], adapter_name="a")
    first_load_s = time.perf_counter() - t0
    pipe.load_lora_weights(files[1], adapter_name="b")
    # A set not active before: its factors concatenated. Then a switch between two recent sets
    # (their snapshots kept): one reference swapped.
    weights = iter(np.linspace(0.3, 0.9, 10))
    new_set_s = _median_seconds(lambda: pipe.set_adapters(["a", "b"], [0.5, next(weights)]), 3)
    touched = pipe.lora_weights.of("unet")
    pipe.set_adapters("a")
    names = iter(["b", "a"] * 10)
    recent_switch_s = _median_seconds(lambda: pipe.set_adapters(next(names)), 6)

    plain = sdrt.Pipeline.load(args.plain, backend="ort-cpu")
    feeds = _unet_feeds(pipe, args.size, batch=2)  # one CFG step of one image
    unet_ready, unet_plain = pipe.session("unet"), plain.session("unet")
    pipe.set_adapters("a")
    adapter_feeds = {**feeds, **pipe.lora_weights.of("unet")}
    pipe.set_adapters(["a", "b"], [0.5, 0.5])
    two_feeds = {**feeds, **pipe.lora_weights.of("unet")}
    # The defaults are zero-size (rank 0); rank-1 zeros fed everywhere is the alternative.
    zeros = {}
    for branch in pipe.manifest.components["unet"].lora_branches:
        down_shape = [1 if isinstance(d, str) else d for d in branch.down_shape]
        zeros[branch.down] = np.zeros(down_shape, branch.dtype)
        zeros[branch.up] = np.zeros((1, branch.features_out), branch.dtype)
    rank1_feeds = {**feeds, **zeros}
    contenders = {
        "plain": lambda: unet_plain.run(feeds),
        "ready_rank1_zeros": lambda: unet_ready.run(rank1_feeds),
        "ready_no_adapter": lambda: unet_ready.run(feeds),
        "ready_adapter": lambda: unet_ready.run(adapter_feeds),
        "ready_two_adapters": lambda: unet_ready.run(two_feeds),
    }
    for run in contenders.values():
        run()  # warm-up
    steps = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            steps[name].append(_median_seconds(run, 1))
    step = {name: statistics.median(values) for name, values in steps.items()}
    result = {
        "settings": {
            "size": args.size,
            "unet_batch": 2,
            "rank": args.rank,
            "rounds": args.rounds,
            "unet_branch_inputs_fed": len(touched),
            "fed_mb": round(sum(v.nbytes for v in touched.values()) / 2**20, 1),
        },
        "load_average": os.getloadavg(),
        "pipeline_load_s": load_s,
        "load_lora_weights_first_s": first_load_s,
        "set_adapters_new_set_s": new_set_s,
        "set_adapters_recent_switch_s": recent_switch_s,
        "new_set_over_load": new_set_s / load_s,
        "recent_switch_over_load": recent_switch_s / load_s,
        "unet_step_s": step,
        "adapter_step_over_plain": step["ready_adapter"] / step["plain"],
        "two_adapters_step_over_plain": step["ready_two_adapters"] / step["plain"],
        "no_adapter_step_over_plain": step["ready_no_adapter"] / step["plain"],
        "rank1_zeros_step_over_plain": step["ready_rank1_zeros"] / step["plain"],
    }
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
