"""The GPU check command, dry-run on the CPU: every step but CUDA, and its report."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")  # the torch baseline (the export extra)


@pytest.fixture
def models(tmp_path, tiny_source, tiny_built, tiny_built_fp16):
    folder = tmp_path / "models"
    folder.mkdir()
    for name, target in (("source", tiny_source), ("fp32", tiny_built), ("fp16", tiny_built_fp16)):
        (folder / f"tiny-{name}").symlink_to(target)
    return folder


def test_the_dry_run_passes_and_writes_one_json_and_markdown_report(tmp_path, models):
    from sdrt.benchmarks.gpu_check import main

    out = tmp_path / "report"
    assert (
        main([str(out), "--dry-run", "--models", str(models), "--steps", "2", "--repeats", "0"])
        == 0
    )
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert report["dry_run"] and report["passed"]
    assert [s["status"] for s in report["steps"]] == ["ok"] * 7, steps
    # pytest -m gpu: collected and skipped here (no CUDA); counted from its junit file.
    tests = steps["pytest -m gpu"]["results"]
    assert tests["tests"] >= 10 and tests["skipped"] == tests["tests"]
    parity = steps["parity with ort-cpu"]["results"]
    assert parity["ort-cpu fp32 cuda_graph=off"]["max_abs"] == 0.0
    fp16 = parity["ort-cpu fp16 cuda_graph=on"]
    assert fp16["passed"] and 50 < fp16["psnr_db"] < 100
    torch = steps["parity with eager torch"]["results"]
    assert torch["ort-cpu fp32"]["psnr_db"] > 100  # same weights and latents: the same image
    timing = steps["timing"]["results"]
    assert set(timing) == {
        *(f"sdrt ort-cpu {p} cuda_graph={g}" for p in ("fp16", "fp32") for g in ("on", "off")),
        "torch",
    }
    assert all(row["unet_step_ms"] > 0 and row["image_ms"] > 0 for row in timing.values())
    copies = steps["arrays stay on the device"]["results"]
    assert copies["host_copies_per_call"] == 1 and copies["unet_fed_device_arrays"]
    markdown = (out / "gpu_check.md").read_text()
    assert "dry run on the CPU" in markdown and "| parity with ort-cpu | ok |" in markdown


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path, models, monkeypatch):
    import sdrt.benchmarks.gpu_check as gpu_check

    def broken_timing(check):
        with check.step("timing"):
            raise RuntimeError("no device")

    monkeypatch.setattr(gpu_check, "check_timing", broken_timing)
    report = gpu_check.run_check(tmp_path / "r", dry_run=True, models=models, pytest=False, steps=1)
    steps = {s["name"]: s for s in report["steps"]}
    assert not report["passed"]
    assert steps["timing"]["status"] == "failed"
    assert "RuntimeError: no device" in steps["timing"]["detail"]
    assert steps["arrays stay on the device"]["status"] == "ok"
