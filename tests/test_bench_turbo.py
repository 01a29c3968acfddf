"""Eager diffusers at the tinyvae contenders' recipe in `sdrt bench` (issue 26): the
``torch+tinyvae`` contender (diffusers' AutoencoderTiny as the pipeline's VAE), the torch
contender each other contender is compared with (the one on the same VAE), and, on the tiny
SD-Turbo architecture with its recipe (Euler a, trailing timesteps, 1 step, guidance 0: no
CFG batch), sdrt and eager diffusers making the same image."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from sdrt.benchmarks.contenders import (
    baseline_for,
    exact_reference,
    is_known,
    mode_contenders,
    resolve,
)
from sdrt.benchmarks.contenders.torch_diffusers import TINY_VAE
from sdrt.benchmarks.fast_modes import TINY_VAE_FOLDER
from sdrt.benchmarks.report import _fast_modes, _summary

from sdrt.errors import InputError

# sdrt's ort-cpu and eager diffusers on the same latents and recipe: their images differ by
# float rounding only (parity tests hold the pipelines to 1e-4); a different VAE decoder
# gives a PSNR far below this.
SAME_RECIPE_MIN_PSNR_DB = 60.0


def test_torch_takes_the_tiny_vae_as_its_own_mode_only():
    spec = resolve("torch+tinyvae", None)
    assert spec.command[1:] == ("-m", "sdrt.benchmarks.contenders.torch_diffusers")
    assert spec.extra_args == (TINY_VAE, TINY_VAE_FOLDER)
    assert spec.model == "source" and spec.variant is None
    assert resolve("torch", None).extra_args == ()
    assert is_known("torch+tinyvae")
    # its tiny VAE is its own: no sdrt variant is built for it, no exact sdrt compared with
    assert mode_contenders(("torch+tinyvae", "ort-cpu+tinyvae"))[0].name == "ort-cpu+tinyvae"
    assert len(mode_contenders(("torch+tinyvae",))) == 0
    assert exact_reference("torch+tinyvae", ("torch+tinyvae", "torch", "ort-cpu")) is None
    with pytest.raises(InputError, match="expected torch with some of the modes tinyvae.*'int8'"):
        is_known("torch+int8")


def test_each_contender_is_compared_with_torch_on_the_same_vae():
    names = ("torch", "torch+tinyvae", "openvino", "openvino+int8+tinyvae", "optimum-intel+tinyvae")
    assert baseline_for("openvino+int8+tinyvae", names) == "torch+tinyvae"
    assert baseline_for("optimum-intel+tinyvae", names) == "torch+tinyvae"
    assert baseline_for("openvino", names) == "torch"
    assert baseline_for("torch+tinyvae", names) == "torch"
    assert baseline_for("torch", names) is None
    # without torch+tinyvae, as before: against torch with its own VAE
    assert baseline_for("openvino+tinyvae", ("torch", "openvino+tinyvae")) == "torch"
    assert baseline_for("openvino", ("torch+tinyvae", "openvino")) is None
    assert baseline_for("torch+tinyvae", ("torch+tinyvae",)) is None


def _record(name: str, end_to_end: float, unet: float) -> dict:
    def stage(value: float) -> dict:
        return {"median": value}

    stages = {
        "end_to_end_s": stage(end_to_end),
        "unet_s": stage(unet),
        "unet_step_s": stage(unet),
        "text_encoder_s": stage(0.1),
        "vae_decode_s": stage(0.2),
        "other_s": stage(0.01),
    }
    result = {"size": "64x64", "stages": stages, "images_per_s": 1 / end_to_end}
    result |= {"other_fraction": 0.01, "runs": 3}
    return {"name": name, "status": "ok", "results": [result]}


def test_report_speedups_divide_the_same_vae_torch_s_time():
    report = {
        "roofline": {"status": "skipped"},
        "contenders": [
            _record("torch", 20.0, 4.0),
            _record("torch+tinyvae", 8.0, 4.0),
            _record("ort-cpu", 10.0, 2.0),
            _record("ort-cpu+tinyvae", 4.0, 2.0),
        ],
    }
    lines = _summary(report, "64x64")
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and " | ok | " in line]
    summary = {cells[0]: cells[3] for cells in rows}
    assert summary["| torch+tinyvae"] == "2.50x"  # against torch
    assert summary["| ort-cpu"] == "2.00x"  # 20 / 10, against torch
    assert summary["| ort-cpu+tinyvae"] == "2.00x"  # 8 / 4, against torch+tinyvae
    assert any("`torch+tinyvae`" in line for line in lines)
    modes = [line for line in _fast_modes(report, "64x64") if line.startswith("| ort-cpu+")]
    # 10 / 4 against exact sdrt, 8 / 4 against torch+tinyvae
    assert modes == ["| ort-cpu+tinyvae | 4.00 s | 2.50x | 2.00x | 2.00 s | 1.00x | — | — | — |"]


@pytest.fixture(scope="module")
def turbo_bench_report(tmp_path_factory):
    from sdrt.cli import main

    out = tmp_path_factory.mktemp("bench-turbo") / "report"
    argv = [
        "bench", "--arch", "tiny-turbo", "--random-weights",
        "--backends", "ort-cpu+tinyvae,torch+tinyvae,torch",
        "--size", "64", "--steps", "1", "--guidance", "0",
        "--scheduler", "EulerAncestralDiscreteScheduler", "--runs", "1", "--warmup", "0",
        "--threads", "2", "--peak-samples", "0",
        "--cache-dir", str(out.parent / "cache"), "-o", str(out),
    ]  # fmt: skip
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_turbo_recipe_gives_sdrt_and_eager_diffusers_the_same_image(turbo_bench_report):
    out, report = turbo_bench_report
    by_name = {c["name"]: c for c in report["contenders"]}
    assert all(c["status"] == "ok" for c in by_name.values()), by_name
    torch_tiny = by_name["torch+tinyvae"]
    assert torch_tiny["settings"]["vae"] == "AutoencoderTiny"
    assert by_name["torch"]["settings"]["vae"] == "AutoencoderKL"
    assert "AutoencoderTiny" in torch_tiny["cold_start"]["load_settings"]["vae"]
    for contender in by_name.values():
        result = contender["results"][0]
        assert contender["settings"]["scheduler"] == "EulerAncestralDiscreteScheduler"
        # guidance 0: one U-Net call for the one step, no CFG batch
        assert result["unet_calls_per_run"] == 1
    sdrt = by_name["ort-cpu+tinyvae"]["results"][0]["parity"]
    assert sdrt["reference"] == "torch+tinyvae"
    assert sdrt["identical"] or sdrt["psnr_db"] > SAME_RECIPE_MIN_PSNR_DB, sdrt
    # the tiny VAE really ran in torch: its image is not torch's with its own VAE
    versus_torch = by_name["torch+tinyvae"]["results"][0]["parity"]
    assert versus_torch["reference"] == "torch"
    assert versus_torch["psnr_db"] < SAME_RECIPE_MIN_PSNR_DB
    assert "`torch+tinyvae`" in (out / "report.md").read_text()
