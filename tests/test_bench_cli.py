"""`sdrt bench` end to end on the tiny model: 2 steps, 1 run, a report that checks out.

torch and ort-cpu run; ort-cuda (no CUDA here) fails at load and Optimum's and
Optimum-Intel's virtualenvs are missing: all are reported with their reason and the run still succeeds. One run is too few
for a verdict: the CLI warns and the report says so. A second run, with enough runs, batch 2
and the peak matmul rate skipped, gives verdicts and no share-of-peak figures.
"""

from __future__ import annotations

import contextlib
import io
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
        "--backends", "torch,ort-cpu,ort-cuda,optimum,optimum-intel+int8",
        "--optimum-venv", str(out.parent / "no-optimum-venv"),
        "--optimum-intel-venv", str(out.parent / "no-optimum-intel-venv"),
        "--size", "64", "--steps", "2", "--runs", "1", "--warmup", "1", "--threads", "2",
        "--matmul-size", "512", "--cache-dir", str(out.parent / "cache"), "-o", str(out),
    ]  # fmt: skip
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(argv) == 0
    (out / "stderr.txt").write_text(stderr.getvalue())
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def quick_report(tiny_source, tiny_built, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-quick") / "report"
    argv = [
        "bench", str(tiny_source), "--built", str(tiny_built), "--backends", "ort-cpu,torch",
        "--size", "64", "--steps", "2", "--batch", "2", "--runs", "3", "--warmup", "1",
        "--threads", "2", "--peak-samples", "0", "--seed", "1",
        "--cache-dir", str(out.parent / "cache"), "-o", str(out),
    ]  # fmt: skip
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(argv) == 0
    (out / "stderr.txt").write_text(stderr.getvalue())
    return out, json.loads((out / "report.json").read_text())


def test_report_json_is_valid(bench_report):
    _, report = bench_report
    jsonschema.validate(report, REPORT_SCHEMA)
    assert report["settings"]["steps"] == 2 and report["settings"]["sizes"] == ["64x64"]
    assert report["machine"]["threads"] == 2
    assert len(report["machine"]["load_average"]["start"]) == 3


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
    # sdrt's load without saved graphs, in its own process, beside the load that ran
    unsaved = by_name["ort-cpu"]["load_without_saved_graphs"]
    assert unsaved["status"] == "ok", unsaved.get("error")
    assert unsaved["load_to_ready_s"] > 0
    assert unsaved["settings"]["cache_optimized_model"] is False
    assert unsaved["settings"]["saved_optimised_graphs"].startswith("not used")
    graphs = by_name["ort-cpu"]["cold_start"]["load_settings"]["saved_optimised_graphs"]
    assert graphs.startswith(("used", "made"))  # made: the first load of this test folder
    assert "load_without_saved_graphs" not in by_name["torch"]
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
    assert by_name["optimum-intel+int8"]["status"] == "unavailable"
    assert "--setup-optimum-intel" in by_name["optimum-intel+int8"]["error"]
    assert by_name["ort-cuda"]["status"] == "failed"
    assert by_name["ort-cuda"]["failed_stage"] == "load" and by_name["ort-cuda"]["error"]


def test_markdown_and_charts(bench_report):
    out, report = bench_report
    text = (out / "report.md").read_text()
    assert "| torch | ok |" in text and "| ort-cpu | ok |" in text
    assert "virtualenv not found" in text
    assert "no saved graphs: every graph optimised at load" in text
    assert report["charts"] == ["charts/stages.png"]  # one size: no latency-vs-size chart
    assert (out / "charts" / "stages.png").read_bytes().startswith(b"\x89PNG")
    for contender in report["contenders"]:
        for result in contender["results"]:
            assert (out / result["image"]).is_file()


def test_one_run_warns_and_gives_no_verdict(bench_report):
    out, report = bench_report
    stderr = " ".join((out / "stderr.txt").read_text().split())
    assert "warning: --runs 1 --warmup 1: too few runs for a verdict" in stderr
    text = (out / "report.md").read_text()
    assert "**Too few runs for a verdict**" in text
    assert "| met |" not in text and "NOT met" not in text
    assert report["verdict_minimum"] == {"runs": 3, "warmup": 1}


def test_enough_runs_give_verdicts_without_share_of_peak(quick_report):
    out, report = quick_report
    jsonschema.validate(report, REPORT_SCHEMA)
    assert "too few runs" not in (out / "stderr.txt").read_text()
    text = (out / "report.md").read_text()
    assert "Too few runs" not in text
    assert "| met |" in text or "NOT met" in text
    # --peak-samples 0: no peak, no share of it, and the report says why
    roofline = report["roofline"]
    assert roofline["status"] == "skipped" and "peak" not in roofline
    assert roofline["flops_per_unet_call"]["64x64"] > 0
    assert "--peak-samples 0" in roofline["reason"] and "(peak not measured)" in text
    assert not any(r["peak_sampled"] for r in report["round_order"]["rounds"])
    for contender in report["contenders"]:
        assert contender["status"] == "ok", contender.get("error")
        (result,) = contender["results"]
        assert "roofline" not in result and result["runs"] == 3


def test_batch_is_images_per_call_with_a_prompt_each(quick_report):
    out, report = quick_report
    settings = report["settings"]
    assert settings["batch"] == 2
    assert len(set(settings["prompts"])) == 2 and len(set(settings["negative_prompts"])) == 2
    assert report["roofline"]["unet_batch"] == 4  # 2 images, guidance doubles it
    for contender in report["contenders"]:
        (result,) = contender["results"]
        assert result["images_per_s"] * result["stages"]["end_to_end_s"]["median"] == (
            pytest.approx(2)
        )


def test_rounds_alternate_in_a_seeded_order(quick_report):
    _, report = quick_report
    rounds = report["round_order"]["rounds"]
    assert [r["run"] for r in rounds] == [0, 1, 2]
    orders = [r["order"] for r in rounds]
    assert orders[0] == orders[1][::-1] == orders[2]
    assert sorted(orders[0]) == ["ort-cpu", "torch"]
    assert "seed 1" in report["round_order"]["method"]
