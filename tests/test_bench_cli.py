"""`sdrt bench` end to end on the tiny model: 2 steps, 1 run, a report that checks out.

torch and ort-cpu run; ort-cuda (no CUDA here) fails at load and Optimum's virtualenv is
missing: both are reported with their reason and the run still succeeds.
"""

from __future__ import annotations

import json

import pytest
from sdrt.benchmarks.report_schema import REPORT_SCHEMA

from sdrt.cli import main

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def bench_report(tiny_source, tiny_built, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report"
    argv = [
        "bench", str(tiny_source), "--built", str(tiny_built),
        "--backends", "torch,ort-cpu,ort-cuda,optimum",
        "--optimum-venv", str(out.parent / "no-optimum-venv"),
        "--size", "64", "--steps", "2", "--runs", "1", "--warmup", "1", "--threads", "2",
        "--matmul-size", "512", "--cache-dir", str(out.parent / "cache"), "-o", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_report_json_is_valid(bench_report):
    _, report = bench_report
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["settings"]["steps"] == 2 and report["settings"]["sizes"] == ["64x64"]
    assert report["machine"]["threads"] == 2


def test_torch_and_sdrt_ran_the_same_work(bench_report):
    _, report = bench_report
    by_name = {c["name"]: c for c in report["contenders"]}
    for name in ("torch", "ort-cpu"):
        contender = by_name[name]
        assert contender["status"] == "ok", contender.get("error")
        assert contender["settings"]["scheduler"] == "EulerDiscreteScheduler"
        assert contender["settings"]["threads"] == 2
        (result,) = contender["results"]
        assert result["runs"] == 1 and result["unet_calls_per_run"] == 2
        assert result["stages"]["unet_step_s"]["count"] == 2
        assert contender["peak_rss_bytes"] > 0 and contender["installed"]["bytes"] > 0
        cold = contender["cold_start"]
        assert cold["process_start_to_first_image_s"] > cold["load_to_ready_s"] > 0
    parity = by_name["ort-cpu"]["results"][0]["parity"]
    assert parity["reference"] == "torch"
    assert parity["identical"] or parity["psnr_db"] > 40  # same weights, latents, scheduler
    # sdrt's run-time install leaves torch out.
    assert "torch" not in by_name["ort-cpu"]["installed"]["distributions"]
    assert "torch" in by_name["torch"]["installed"]["distributions"]


def test_side_measurements(bench_report):
    _, report = bench_report
    roofline = report["roofline"]
    assert roofline["status"] == "ok", roofline.get("error")
    assert roofline["unet_batch"] == 2 and roofline["flops_per_unet_call"]["64x64"] > 0
    assert roofline["peak"]["matmul_size"] == 512
    # one sample after the measured run and one after all runs
    assert len(roofline["peak"]["samples_flops_per_s"]) == 2
    (ort,) = [c for c in report["contenders"] if c["name"] == "ort-cpu"]
    assert ort["results"][0]["roofline"]["fraction_of_peak"] > 0
    bench = report["scheduler_bench"]
    assert bench["status"] == "ok", bench.get("error")
    assert {row["backend"] for row in bench["rows"]} == {"sdrt-numpy", "diffusers-torch"}
    assert all(row["shape"] == [2, 4, 8, 8] for row in bench["rows"])


def test_failed_contenders_say_why(bench_report):
    _, report = bench_report
    by_name = {c["name"]: c for c in report["contenders"]}
    assert by_name["optimum"]["status"] == "unavailable"
    assert "virtualenv not found" in by_name["optimum"]["error"]
    assert by_name["ort-cuda"]["status"] == "failed"
    assert by_name["ort-cuda"]["failed_stage"] == "load" and by_name["ort-cuda"]["error"]


def test_markdown_and_charts(bench_report):
    out, report = bench_report
    text = (out / "report.md").read_text()
    assert "| torch | ok |" in text and "| ort-cpu | ok |" in text
    assert "virtualenv not found" in text
    assert report["charts"] == ["charts/stages.png"]  # one size: no latency-vs-size chart
    assert (out / "charts" / "stages.png").read_bytes().startswith(b"\x89PNG")
    for contender in report["contenders"]:
        for result in contender["results"]:
            assert (out / result["image"]).is_file()
