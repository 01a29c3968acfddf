"""The scheduler micro-benchmark runs and reports the settings that ran (no timing asserted)."""

from __future__ import annotations

import json

import pytest
from sdrt.benchmarks.scheduler_bench import main, run_scheduler_bench

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_rows_record_the_settings_that_ran():
    rows = run_scheduler_bench(
        schedulers=["euler_a", "heun"], shape=(1, 4, 8, 8), steps=3, repeats=1
    )
    assert [(r["scheduler"], r["backend"]) for r in rows] == [
        ("euler_a", "sdrt-numpy"),
        ("euler_a", "diffusers-torch"),
        ("heun", "sdrt-numpy"),
        ("heun", "diffusers-torch"),
    ]
    for row in rows:
        assert row["shape"] == [1, 4, 8, 8]
        assert row["steps"] == 3
        assert row["unet_calls"] == (5 if row["scheduler"] == "heun" else 3)
        assert row["us_per_step"] > 0
        assert row["schedule_ms"] >= row["schedule_ms_min"] > 0
        assert row["share_of_unet_call"] == pytest.approx(row["schedule_ms"] / 1e3 / 3.4)


def test_sdrt_rows_only_without_diffusers():
    rows = run_scheduler_bench(
        schedulers=["ddim"], shape=(1, 4, 8, 8), steps=2, repeats=1, include_diffusers=False
    )
    assert [r["backend"] for r in rows] == ["sdrt-numpy"]


def test_command_line_writes_json(tmp_path, capsys):
    out = tmp_path / "rows.json"
    args = ["--schedulers", "lcm", "--shape", "1,4,8,8", "--steps", "2", "--repeats", "1"]
    assert main([*args, "--no-diffusers", "--json", str(out)]) == 0
    assert "lcm" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["scheduler"] == "lcm"
    with pytest.raises(SystemExit):
        main(["--schedulers", "k_euler"])
