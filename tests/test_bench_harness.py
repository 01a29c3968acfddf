"""The harness's scheduling with fake contenders: cold start first, then A B A B per size."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sdrt.benchmarks import harness
from sdrt.benchmarks.config import BenchConfig, parse_sizes
from sdrt.benchmarks.contenders import ContenderSpec
from sdrt.benchmarks.models import BenchModels

FAKE = Path(__file__).with_name("bench_fake_contender.py")


class SilentProgress:
    def status(self, message: str) -> None:
        pass

    def start_runs(self, total: int) -> None:
        pass

    def advance(self, description: str) -> None:
        pass


def _benchmark(tmp_path, monkeypatch, backends, fail_at=None):
    log = tmp_path / "requests.log"

    def resolve(name, optimum_venv):
        extra = (name, str(log), *([str(fail_at[name])] if name in (fail_at or {}) else []))
        return ContenderSpec(name, (sys.executable, str(FAKE)), extra, "built")

    monkeypatch.setattr(harness.contenders, "resolve", resolve)
    # a peak sample per measured round, recorded here instead of timing real matmuls
    monkeypatch.setattr(
        harness.Benchmark,
        "_sample_peak",
        lambda self: self.peak_samples.append(
            {"after_requests": len(log.read_text().splitlines())}
        ),
    )
    config = BenchConfig(
        source=None,
        random_arch="tiny",
        output_dir=tmp_path / "report",
        cache_dir=tmp_path / "cache",
        backends=backends,
        sizes=parse_sizes(["16", "24"]),
        steps=2,
        runs=2,
        warmup=1,
        threads=1,
    )
    bench = harness.Benchmark(config, SilentProgress())
    bench.work_dir.mkdir(parents=True)
    requests = {}
    for size in config.sizes:
        latents = bench.work_dir / f"latents-{size.label}.npy"
        np.save(latents, np.zeros((1, 4, size.height // 8, size.width // 8), np.float32))
        requests[size.label] = harness.workload(config, size, latents)
    models = BenchModels(tmp_path, tmp_path, "fake", built_reused=True)
    bench._measure(models, requests)
    return bench, log.read_text().splitlines()


def test_cold_start_then_interleaved_runs(tmp_path, monkeypatch):
    bench, order = _benchmark(tmp_path, monkeypatch, ("a", "b"))
    first, second = ["a 16x16", "b 16x16"], ["a 24x24", "b 24x24"]
    # the cold image (first warm-up) of each in turn, then A B A B; then the next size
    assert order == first + first * 2 + second + second * 2
    for state in bench.states:
        assert state.status == "ok"
        assert [len(state.runs[s]) for s in ("16x16", "24x24")] == [2, 2]
        assert state.cold_start_s > 0 and state.peak_rss_bytes > 0
        assert set(state.images) == {"16x16", "24x24"}
    # one peak sample after each measured round (A B), sizes x runs of them
    assert [sample["after_requests"] for sample in bench.peak_samples] == [4, 6, 10, 12]


def test_a_failing_contender_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    bench, order = _benchmark(tmp_path, monkeypatch, ("a", "b"), fail_at={"a": 2})
    a, b = bench.states
    assert (a.status, a.failed_stage) == ("failed", "run")
    assert "RuntimeError: a broke on request 2" in a.error
    assert order.count("a 16x16") == 1 and order.count("b 24x24") == 3
    assert b.status == "ok" and len(b.runs["24x24"]) == 2
