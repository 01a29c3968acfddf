"""benchmarks/studies/service_cost.py on the tiny model: it starts real servers on loopback, and the
served images it times are the direct Pipeline's pixels."""

import json

import pytest
from conftest import TINY_MIN_SIZE
from sdrt.benchmarks.studies import service_cost


def test_cold_start_and_overhead_rows(tiny_built, capsys):
    service_cost.main(
        [
            str(tiny_built),
            "--size",
            str(TINY_MIN_SIZE),
            "--steps",
            "1",
            "--pairs",
            "1",
            "--threads",
            "2",
        ]
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    warm, cold, cost = rows
    assert (warm["warmup"], cold["warmup"]) == (True, False)
    for row in (warm, cold):
        assert 0 < row["process_start_to_ready_s"] < row["process_start_to_first_image_s"]
        assert row["load_s"] > 0
    assert warm["warmup_s"] > 0 and cold["warmup_s"] is None
    assert cost["served_vs_direct_max_pixel_diff"] == 0
    assert cost["served_median_s"] > 0 and cost["direct_median_s"] > 0


def test_dropping_the_page_cache_is_recorded_and_a_refusal_is_clear(
    tiny_built, capsys, monkeypatch, tmp_path
):
    drops = []
    monkeypatch.setattr(service_cost, "drop_page_cache", lambda: drops.append(1))
    arguments = [str(tiny_built), "--size", str(TINY_MIN_SIZE), "--steps", "1", "--threads", "2"]
    service_cost.main([*arguments, "--drop-caches", "--no-overhead"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["page_cache_dropped"] for r in rows] == [True, True] and len(drops) == 2
    monkeypatch.undo()
    monkeypatch.setattr(service_cost, "DROP_CACHES", tmp_path / "missing" / "drop_caches")
    with pytest.raises(SystemExit, match="--drop-caches: cannot write .*drop_caches"):
        service_cost.drop_page_cache()
