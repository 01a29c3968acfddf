"""The harness's scheduling with fake contenders: loads without saved graphs alone first,
then each cold start, then per size the warm-ups and the measured rounds, the contenders'
order shuffled with the seed and rotated each round."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from bench_helpers import SilentProgress
from sdrt.benchmarks import config as bench_config
from sdrt.benchmarks import harness
from sdrt.benchmarks.config import BenchConfig, parse_sizes
from sdrt.benchmarks.contenders import ContenderSpec
from sdrt.benchmarks.models import BenchModels

FAKE = Path(__file__).with_name("bench_fake_contender.py")


def _benchmark(tmp_path, monkeypatch, backends, fail_at=None, unsaved=(), **settings):
    log = tmp_path / "requests.log"

    def resolve(name, *venvs):
        extra = (name, str(log), *([str(fail_at[name])] if name in (fail_at or {}) else []))
        flags = ("--no-saved-graphs",) if name in unsaved else None
        return ContenderSpec(name, (sys.executable, str(FAKE)), extra, "built", flags)

    monkeypatch.setattr(harness.contenders, "resolve", resolve)

    def sample_peak(self):
        """A peak sample, recorded here instead of timing real matmuls."""
        self.peak_samples.append({"after_requests": len(log.read_text().splitlines())})
        return True

    monkeypatch.setattr(harness.Benchmark, "_sample_peak", sample_peak)
    config = BenchConfig(
        source=None,
        random_arch="tiny",
        output_dir=tmp_path / "report",
        cache_dir=tmp_path / "cache",
        backends=backends,
        **{"sizes": parse_sizes(["16", "24"]), "steps": 2, "runs": 2, "warmup": 1, **settings},
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


def test_cold_start_then_rounds_in_a_seeded_rotating_order(tmp_path, monkeypatch):
    bench, order = _benchmark(tmp_path, monkeypatch, ("a", "b"))
    # the cold image (first warm-up) of each in turn; then per size two measured rounds
    assert order[:2] == ["a 16x16", "b 16x16"]
    recorded = [r["order"] for r in bench.rounds]
    assert recorded == bench_config.round_orders(("a", "b"), 4, seed=0)
    # two contenders: the order alternates, so each goes first in half of the rounds
    assert recorded[0] == recorded[1][::-1] == recorded[2] == recorded[3][::-1]
    assert [(r["size"], r["run"]) for r in bench.rounds] == [
        ("16x16", 0),
        ("16x16", 1),
        ("24x24", 0),
        ("24x24", 1),
    ]
    expected = [f"{name} {r['size']}" for r in bench.rounds for name in r["order"]]
    assert order[2:6] + order[8:] == expected
    assert order[6:8] == ["a 24x24", "b 24x24"]  # the warm-ups of the second size
    for state in bench.states:
        assert state.status == "ok"
        assert [len(state.runs[s]) for s in ("16x16", "24x24")] == [2, 2]
        assert state.cold_start_s > 0 and state.peak_rss_bytes > 0
        assert set(state.images) == {"16x16", "24x24"}
        assert state.ready.load_settings == {"saved_graphs": True}
        assert state.unsaved_load is None  # the fakes here have no such load
    # by default one peak sample after each measured round (A B), sizes x runs of them
    assert [sample["after_requests"] for sample in bench.peak_samples] == [4, 6, 10, 12]
    assert all(r["peak_sampled"] for r in bench.rounds)


def test_another_seed_can_start_with_another_contender():
    firsts = {bench_config.round_orders(("a", "b", "c"), 1, seed)[0][0] for seed in range(20)}
    assert firsts == {"a", "b", "c"}
    # three contenders: every one first, second and last once in three rounds
    orders = bench_config.round_orders(("a", "b", "c"), 3, seed=5)
    for position in range(3):
        assert sorted(order[position] for order in orders) == ["a", "b", "c"]


def test_peak_samples_are_spread_over_the_rounds_or_skipped(tmp_path, monkeypatch):
    bench, _ = _benchmark(tmp_path, monkeypatch, ("a",), runs=3, peak_samples=3)
    # 6 rounds, 3 samples: after rounds 3 and 6, and the last after all (not here)
    assert [r["peak_sampled"] for r in bench.rounds] == [False, False, True] * 2
    assert len(bench.peak_samples) == 2
    assert bench_config.peak_sample_rounds(6, 1) == frozenset()
    assert bench_config.peak_sample_rounds(6, 100) == frozenset(range(6))
    skipped, _ = _benchmark(tmp_path / "skip", monkeypatch, ("a",), peak_samples=0)
    assert skipped.peak_samples == [] and not any(r["peak_sampled"] for r in skipped.rounds)


def test_loads_without_saved_graphs_come_first_alone(tmp_path, monkeypatch):
    bench, order = _benchmark(tmp_path, monkeypatch, ("a", "b"), unsaved=("b",))
    # b's load-only process ran and quit before any contender started
    assert order[:3] == ["b load without saved graphs", "a 16x16", "b 16x16"]
    a, b = bench.states
    assert a.unsaved_load is None
    assert b.unsaved_load["status"] == "ok"
    assert b.unsaved_load["settings"] == {"saved_graphs": False}
    assert b.unsaved_load["load_to_ready_s"] >= 0
    assert b.unsaved_load["process_start_to_ready_s"] > 0
    assert b.ready.load_settings == {"saved_graphs": True}  # its own start used them


def test_a_failing_contender_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    bench, order = _benchmark(tmp_path, monkeypatch, ("a", "b"), fail_at={"a": 2})
    a, b = bench.states
    assert (a.status, a.failed_stage) == ("failed", "run")
    assert "RuntimeError: a broke on request 2" in a.error
    assert order.count("a 16x16") == 1 and order.count("b 24x24") == 3
    # the rounds record who ran: a is gone from the first round on
    assert [r["order"] for r in bench.rounds] == [["b"]] * 4
    assert b.status == "ok" and len(b.runs["24x24"]) == 2


def test_end_to_end_is_the_whole_timed_call_not_the_model_stages(tmp_path, monkeypatch):
    # each request: 4 model stages of 20 ms and 150 ms outside them (fake_contender's sleeps)
    stage_s, other_s = 0.02, 0.15
    monkeypatch.setenv("SDRT_FAKE_STAGE_S", str(stage_s))
    monkeypatch.setenv("SDRT_FAKE_OTHER_S", str(other_s))
    bench, _ = _benchmark(tmp_path, monkeypatch, ("a",))
    (state,) = bench.states
    record = bench._contender_record(state, {"status": "skipped"}, reference=None)
    for result in record["results"]:
        stages = result["stages"]
        models = sum(stages[f"{s}_s"]["median"] for s in ("text_encoder", "unet", "vae_decode"))
        assert models >= 4 * stage_s
        end_to_end = stages["end_to_end_s"]["median"]
        assert end_to_end >= models + other_s
        assert stages["other_s"]["median"] >= other_s
        assert result["other_fraction"] >= other_s / end_to_end * 0.99
        assert result["images_per_s"] == bench.config.batch / end_to_end
