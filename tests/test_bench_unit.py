"""The benchmark's parts that need no model: sizes, statistics, parity, install size, command."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sdrt.benchmarks.config import BenchConfig, Size, parse_sizes, reproduce_command
from sdrt.benchmarks.contenders.protocol import installed_size, peak_rss_bytes
from sdrt.benchmarks.parity import compare_images
from sdrt.benchmarks.report import render_markdown, speedup_bound
from sdrt.benchmarks.report_schema import REPORT_SCHEMA
from sdrt.benchmarks.stats import percentile, summarize

from sdrt.cli import build_parser
from sdrt.commands.bench import _config
from sdrt.errors import InputError


def test_sizes_accept_repeats_commas_and_rectangles():
    sizes = parse_sizes(["256", "512,512x768", "256"])
    assert sizes == (Size(256, 256), Size(512, 512), Size(768, 512))
    assert sizes[2].label == "512x768"


@pytest.mark.parametrize("text", ["0", "250", "abc", "64x", ""])
def test_sizes_reject_what_is_not_a_multiple_of_8(text):
    with pytest.raises(InputError, match="--size"):
        parse_sizes([text])


def test_summary_matches_numpy_percentiles():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    summary = summarize(values)
    assert summary["median"] == pytest.approx(np.percentile(values, 50))
    assert summary["p90"] == pytest.approx(np.percentile(values, 90))
    assert (summary["min"], summary["max"], summary["count"]) == (1.0, 10.0, 6)
    assert percentile([7.0], 90) == 7.0


def test_parity_psnr_and_max_abs_diff():
    reference = np.zeros((1, 4, 4, 3), dtype=np.float32)
    image = reference.copy()
    assert compare_images(image, reference) == {
        "psnr_db": None,
        "max_abs_diff": 0.0,
        "identical": True,
    }
    image[0, 0, 0, 0] = 0.5  # MSE = 0.25 / 48
    parity = compare_images(image, reference)
    assert parity["psnr_db"] == pytest.approx(10 * math.log10(48 / 0.25))
    assert parity["max_abs_diff"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        compare_images(image[:, :2], reference)


def test_installed_size_follows_requirements_but_not_extras():
    measured = installed_size(("jsonschema",))
    names = measured["distributions"]
    assert "jsonschema" in names and "referencing" in names  # a run-time requirement
    assert "pytest" not in names  # only behind jsonschema's extras / not required
    assert measured["bytes"] == sum(names.values())


def test_peak_rss_is_this_process_own():
    assert 10 << 20 < peak_rss_bytes() < 64 << 30


def _args(*argv: str):
    return build_parser().parse_args(["bench", *argv])


def test_reproduced_command_parses_back_to_the_same_config(tmp_path):
    config = _config(
        _args(
            "--arch", "tiny", "--random-weights", "--size", "64,128x96", "--steps", "3",
            "--backends", "torch,ort-cpu,optimum", "--threads", "2", "--prompt", "a 'quoted' fox",
            "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "report"),
        )
    )  # fmt: skip
    argv = __import__("shlex").split(reproduce_command(config))
    assert argv[:2] == ["sdrt", "bench"]
    assert _config(build_parser().parse_args(argv[1:])) == config


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "tiny", "--random-weights"], "-o/--output"),
        (["--arch", "tiny", "-o", "r"], "go together"),
        (["-o", "r"], "expected SOURCE"),
        (["src", "--arch", "tiny", "--random-weights", "-o", "r"], "got both"),
        (["--arch", "tiny", "--random-weights", "--runs", "0", "-o", "r"], "--runs"),
        (["--arch", "tiny", "--random-weights", "--built", "b", "-o", "r"], "--built needs"),
        (["--arch", "tiny", "--random-weights", "--scheduler", "fast", "-o", "r"], "--scheduler"),
    ],
)
def test_bad_arguments_say_what_was_expected(argv, message):
    with pytest.raises(InputError, match=message):
        _config(_args(*argv))


def test_scheduler_aliases_become_diffusers_class_names(tmp_path):
    args = _args("--arch", "tiny", "--random-weights", "--scheduler", "dpmpp_2m", "-o", "r")
    assert _config(args).scheduler == "DPMSolverMultistepScheduler"


def test_unknown_backend_is_a_one_line_error(tmp_path, capsys):
    from sdrt.cli import main

    code = main(["bench", "--arch", "tiny", "--random-weights", "--backends", "torch,nope",
                 "-o", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "unknown nope" in capsys.readouterr().err


def test_markdown_of_a_report_whose_contenders_all_failed():
    jsonschema = pytest.importorskip("jsonschema")
    report = {
        "schema_version": 1,
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:01+00:00",
        "command": "sdrt bench x -o r",
        "settings": {
            "backends": ["torch", "ort-cpu"], "sizes": ["64x64"], "steps": 2, "batch": 1,
            "guidance": 7.5, "scheduler": "EulerDiscreteScheduler", "runs": 1, "warmup": 1,
            "threads": 2, "precision": "fp32", "seed": 0, "prompts": ["p"], "negative_prompt": "",
        },
        "machine": {"cpu_model": "cpu", "logical_cpus": 2, "threads": 2, "memory_bytes": 1},
        "versions": {"sdrt": "0"},
        "model": {"source": "x", "source_dir": "x", "built_dir": "y"},
        "roofline": {"status": "failed", "error": "no torch", "unet_batch": 2,
                     "flops_per_unet_call": {}},
        "contenders": [
            {"name": name, "status": "failed", "error": f"{name} broke", "failed_stage": "load",
             "settings": {}, "results": [], "peak_rss_bytes": None, "log": f"logs/{name}.log"}
            for name in ("torch", "ort-cpu")
        ],
        "scheduler_bench": {"status": "failed", "error": "missing", "rows": []},
        "charts": [],
    }  # fmt: skip
    jsonschema.validate(report, REPORT_SCHEMA)
    text = render_markdown(report)
    assert "ort-cpu broke" in text and "not measured" in text and "no torch" in text


def test_config_rejects_source_and_arch_together(tmp_path):
    with pytest.raises(InputError, match="either SOURCE"):
        BenchConfig(source="a", random_arch="tiny", output_dir=tmp_path, cache_dir=tmp_path)


def _contender(name, end_to_end, unet_total, calls=10):
    stages = {"end_to_end_s": {"median": end_to_end}, "unet_s": {"median": unet_total}}
    return {
        "name": name,
        "results": [{"size": "256x256", "unet_calls_per_run": calls, "stages": stages}],
    }


def test_speedup_bound_puts_the_unet_at_peak_and_keeps_the_other_stages():
    torch = _contender("torch", end_to_end=40.0, unet_total=35.0)
    ours = _contender("ort-cpu", end_to_end=30.0, unet_total=26.0)
    # 10 calls of 300 GFLOP at 150 GFLOP/s: 20 s of U-Net at best, plus 4 s of the rest
    bound = speedup_bound(ours, torch, "256x256", flops=300e9, peak=150e9)
    assert bound["end_to_end_at_peak_s"] == pytest.approx(24.0)
    assert bound["speedup_at_peak"] == pytest.approx(40.0 / 24.0)
    assert speedup_bound(ours, torch, "512x512", flops=300e9, peak=150e9) is None


def test_median_peak_keeps_every_sample():
    from sdrt.benchmarks.roofline import median_peak

    def sample(numpy_rate, torch_rate):
        return {
            "peak_flops_per_s": max(numpy_rate, torch_rate),
            "numpy_flops_per_s": numpy_rate,
            "torch_flops_per_s": torch_rate,
            "matmul_size": 512,
            "threads": 2,
            "repeats": 3,
            "method": "best of 3",
        }

    peak = median_peak([sample(100e9, 150e9), sample(90e9, 120e9), sample(130e9, 170e9)])
    assert peak["peak_flops_per_s"] == 150e9
    assert peak["numpy_flops_per_s"] == 100e9
    assert peak["samples_flops_per_s"] == [150e9, 120e9, 170e9]
    assert peak["method"].startswith("median of 3 samples")
