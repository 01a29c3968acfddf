"""Issue 14's targets read from a report: the right contender, the right comparison, and a
verdict only where the target is stated."""

from sdrt.benchmarks.fast_mode_targets import check_targets, mode_words
from sdrt.benchmarks.report import _fast_mode_target_section


def _contender(name, size_seconds):
    return {
        "name": name,
        "status": "ok",
        "results": [
            {
                "size": size,
                "runs": 3,
                "stages": {
                    "end_to_end_s": {"median": end_to_end},
                    "unet_step_s": {"median": step},
                },
            }
            for size, (end_to_end, step) in size_seconds.items()
        ],
    }


def _report():
    sizes = ("256x256", "512x512")
    return {
        "settings": {"sizes": list(sizes), "steps": 10, "runs": 3, "warmup": 1},
        "contenders": [
            _contender("torch", {s: (40.0, 3.0) for s in sizes}),
            _contender("ort-cpu", {s: (20.0, 1.5) for s in sizes}),
            _contender("ort-cpu+int8", {s: (12.0, 1.0) for s in sizes}),  # step 1.5x: not met
            _contender("ort-cpu+deepcache3b0", {s: (10.0, 1.5) for s in sizes}),  # 2x: met
            _contender("ort-cpu+int8+deepcache3", {s: (8.0, 1.0) for s in sizes}),  # 5x torch
            _contender("ort-cpu+int8+tinyvae", {s: (1.0, 1.0) for s in sizes}),  # no target
        ],
    }


def test_each_target_is_checked_on_its_own_contender_only():
    checked = {(c.contender, c.size): c for c in check_targets(_report())}
    assert {name for name, _ in checked} == {
        "ort-cpu+int8",
        "ort-cpu+deepcache3b0",
        "ort-cpu+int8+deepcache3",
    }
    int8 = checked["ort-cpu+int8", "256x256"]
    assert (int8.against, int8.value, int8.met) == ("ort-cpu", 1.5, False)
    deep_cache = checked["ort-cpu+deepcache3b0", "256x256"]
    assert (deep_cache.against, deep_cache.value, deep_cache.met) == ("ort-cpu", 2.0, True)
    both = checked["ort-cpu+int8+deepcache3", "256x256"]
    assert (both.against, both.value, both.met, both.applies) == ("torch", 5.0, True, True)
    # the 4x target is stated for 256 px and 10 steps: at 512 px it is for information
    assert checked["ort-cpu+int8+deepcache3", "512x512"].applies is False


def test_the_report_section_gives_verdicts_and_information():
    section = "\n".join(_fast_mode_target_section(_report()))
    assert "## Targets (issue 14: fast modes)" in section
    rows = [line for line in section.splitlines() if line.startswith("| ort-cpu")]
    assert len(rows) == 6
    assert sum("NOT met" in row for row in rows) == 2  # int8 at both sizes
    assert sum(row.endswith("| met |") for row in rows) == 3
    assert sum("for information" in row for row in rows) == 1


def test_too_few_runs_give_no_verdict():
    report = _report()
    report["settings"]["runs"] = 1
    section = "\n".join(_fast_mode_target_section(report))
    assert "too few runs for a verdict" in section
    assert "| met |" not in section


def test_mode_words_treat_the_default_branch_alike():
    assert mode_words("ort-cpu+deepcache3b0") == mode_words("ort-cpu+deepcache3")
    assert mode_words("ort-cpu+deepcache3b1") != mode_words("ort-cpu+deepcache3")
