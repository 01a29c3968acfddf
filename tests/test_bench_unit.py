"""The benchmark's parts that need no model: sizes, statistics, parity, install size, command."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sdrt.benchmarks.config import (
    DEFAULT_PROMPT,
    MIN_RUNS_FOR_VERDICT,
    MIN_WARMUP_FOR_VERDICT,
    BenchConfig,
    Size,
    parse_sizes,
    reproduce_command,
    too_few_runs_warning,
)
from sdrt.benchmarks.contenders.protocol import installed_size, peak_rss_bytes
from sdrt.benchmarks.parity import compare_images
from sdrt.benchmarks.report import NO_VERDICT, NOT_LIKE_FOR_LIKE, render_markdown, speedup_bound
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
        "schema_version": 2,
        "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T00:00:01+00:00",
        "command": "sdrt bench x -o r",
        "settings": {
            "backends": ["torch", "ort-cpu"], "sizes": ["64x64"], "steps": 2, "batch": 1,
            "guidance": 7.5, "scheduler": "EulerDiscreteScheduler", "runs": 1, "warmup": 1,
            "threads": 2, "precision": "fp32", "seed": 0, "prompts": ["p"], "negative_prompt": "",
            "negative_prompts": [""],
        },
        "verdict_minimum": {"runs": 3, "warmup": 1},
        "round_order": {"method": "shuffled", "rounds": []},
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


# ------------------------------------------------------------------ fairness of the workload


def test_each_image_of_a_batch_gets_its_own_prompt(tmp_path):
    one = BenchConfig(source=None, random_arch="tiny", output_dir=tmp_path, cache_dir=tmp_path)
    assert one.prompts == (DEFAULT_PROMPT,)
    three = BenchConfig(
        source=None, random_arch="tiny", output_dir=tmp_path, cache_dir=tmp_path, batch=3
    )
    assert len(set(three.prompts)) == 3 and len(set(three.negative_prompts)) == 3
    assert three.prompts[1] == f"{DEFAULT_PROMPT}, variant 2"
    # what every contender's pipeline is called with: one prompt and negative per image
    from sdrt.benchmarks.contenders.protocol import Workload
    from sdrt.benchmarks.harness import workload

    call = Workload.from_dict(workload(three, three.sizes[0], "x.npy")).call_arguments()
    assert call["prompt"] == list(three.prompts)
    assert call["negative_prompt"] == list(three.negative_prompts)


def test_batch_means_images_per_call_and_size_takes_n_or_wxh(capsys):
    args = _args("--arch", "tiny", "--random-weights", "--batch", "2", "--size", "96x64", "-o", "r")
    config = _config(args)
    assert config.batch == 2 and len(config.prompts) == 2
    assert config.sizes == (Size(height=64, width=96),)  # W x H, as `sdrt generate --size`
    with pytest.raises(SystemExit):
        _args("--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--batch BATCH images per call" in help_text
    assert "--size N|WxH image size, N (square) or WxH" in help_text


def test_too_few_runs_warns_and_names_the_minimum(tmp_path):
    def config(runs, warmup):
        return BenchConfig(
            source=None, random_arch="tiny", output_dir=tmp_path, cache_dir=tmp_path,
            runs=runs, warmup=warmup,
        )  # fmt: skip

    assert too_few_runs_warning(config(MIN_RUNS_FOR_VERDICT, MIN_WARMUP_FOR_VERDICT)) is None
    for runs, warmup in ((1, 0), (MIN_RUNS_FOR_VERDICT - 1, 1), (5, 0)):
        warning = too_few_runs_warning(config(runs, warmup))
        assert "too few runs for a verdict" in warning
        assert f"--runs {runs} --warmup {warmup}" in warning


def test_peak_samples_must_not_be_negative_and_round_trip(tmp_path):
    with pytest.raises(InputError, match="--peak-samples"):
        _config(_args("--arch", "tiny", "--random-weights", "--peak-samples", "-1", "-o", "r"))
    config = _config(
        _args("--arch", "tiny", "--random-weights", "--peak-samples", "0", "--cache-dir",
              str(tmp_path), "-o", "r")
    )  # fmt: skip
    assert config.peak_samples == 0 and config.peak_sample_count == 0
    argv = __import__("shlex").split(reproduce_command(config))
    assert _config(build_parser().parse_args(argv[1:])) == config


# ------------------------------------------------------------------ verdicts in report.md


def _result(end_to_end, runs, fraction=0.8):
    stats = {"median": end_to_end, "p90": end_to_end, "min": end_to_end, "max": end_to_end,
             "count": runs}  # fmt: skip
    stages = {k: dict(stats) for k in ("text_encoder_s", "unet_s", "vae_decode_s", "other_s")}
    stages["other_s"] = {**stats, "median": end_to_end * 0.001}
    return {
        "size": "64x64", "height": 64, "width": 64, "runs": runs, "unet_calls_per_run": 2,
        "stages": {**stages, "end_to_end_s": stats, "unet_step_s": stats},
        "images_per_s": 1 / end_to_end, "other_fraction": 0.001, "raw": {},
        "roofline": {"achieved_flops_per_s": 1.0, "fraction_of_peak": fraction},
        "parity": {"reference": "torch", "psnr_db": 60.0, "max_abs_diff": 1e-3,
                   "identical": False},
    }  # fmt: skip


def _contender_with(name, end_to_end, load_s, runs, **extra):
    return {
        "name": name, "status": "ok", "settings": {}, "peak_rss_bytes": 1, "log": "l",
        "cold_start": {"import_s": 0.1, "load_to_ready_s": load_s,
                       "process_start_to_first_image_s": load_s + 1, "load_settings": {}},
        "results": [_result(end_to_end, runs)], **extra,
    }  # fmt: skip


def _verdict_report(runs, warmup, unsaved_load_s=2.0, roofline=None):
    settings = {
        "backends": ["torch", "ort-cpu", "optimum"], "sizes": ["64x64"], "steps": 2,
        "batch": 2, "guidance": 7.5, "scheduler": "EulerDiscreteScheduler", "runs": runs,
        "warmup": warmup, "threads": 2, "precision": "fp32", "seed": 0,
        "prompts": ["p, variant 1", "p, variant 2"], "negative_prompt": "n",
        "negative_prompts": ["n, variant 1", "n, variant 2"],
    }  # fmt: skip
    unsaved = {"status": "ok", "import_s": 0.1, "load_to_ready_s": unsaved_load_s,
               "settings": {"cache_optimized_model": False}, "log": "l2"}  # fmt: skip
    ours = _contender_with("ort-cpu", 10.0, 1.0, runs, load_without_saved_graphs=unsaved)
    ours["cold_start"]["load_settings"] = {"saved_optimised_graphs": "used: mapped"}
    return {
        "schema_version": 2, "started": "s", "finished": "f", "command": "sdrt bench x -o r",
        "settings": settings, "verdict_minimum": {"runs": 3, "warmup": 1},
        "round_order": {"method": "shuffled with seed 0, rotated", "rounds": [
            {"size": "64x64", "run": i, "order": ["torch", "ort-cpu", "optimum"],
             "peak_sampled": True} for i in range(runs)]},
        "machine": {"cpu_model": "cpu", "logical_cpus": 2, "threads": 2, "memory_bytes": 1},
        "versions": {"sdrt": "0"},
        "model": {"source": "x", "source_dir": "x", "built_dir": "y"},
        "roofline": roofline or {"status": "ok", "unet_batch": 4,
                                 "flops_per_unet_call": {"64x64": 10**9},
                                 "peak": {"peak_flops_per_s": 1e9, "matmul_size": 512,
                                          "threads": 2, "numpy_flops_per_s": 1e9,
                                          "torch_flops_per_s": 1e9, "method": "m"}},
        "contenders": [
            _contender_with("torch", 30.0, 4.0, runs), ours,
            _contender_with("optimum", 11.0, 10.0, runs),
        ],
        "scheduler_bench": {"status": "ok", "rows": []},
        "charts": [],
    }  # fmt: skip


def _verdicts(text):
    """{target's first four words: verdict} of report.md's targets table."""
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ort-cpu | 64")]
    return {" ".join(row[2].split()[:4]): row[4].rstrip(" |") for row in rows}


def test_one_run_gives_figures_but_no_verdict():
    jsonschema = pytest.importorskip("jsonschema")
    report = _verdict_report(runs=1, warmup=0)
    jsonschema.validate(report, REPORT_SCHEMA)
    text = render_markdown(report)
    assert "**Too few runs for a verdict**" in text
    verdicts = _verdicts(text)
    assert set(verdicts.values()) == {NO_VERDICT, NOT_LIKE_FOR_LIKE}
    assert "| ort-cpu | 64x64 | end to end ≥ 2.3x faster than torch (ratio) | 3 |" in text


def test_enough_runs_give_verdicts_and_the_load_target_is_like_for_like():
    report = _verdict_report(runs=3, warmup=1, unsaved_load_s=2.0)
    text = render_markdown(report)
    assert "Too few runs" not in text
    verdicts = _verdicts(text)
    assert verdicts["end to end ≥"] == "met"  # 30 s / 10 s
    assert verdicts["end to end no"] == "met"  # 10 s against 11 s
    # like for like: 2.0 s without saved graphs against Optimum's 10 s: 0.2 <= 0.25
    assert verdicts["load → ready ≤"] == "met"
    assert verdicts["load → ready from"] == NOT_LIKE_FOR_LIKE  # 1 s / 10 s, informative
    slower = render_markdown(_verdict_report(runs=3, warmup=1, unsaved_load_s=5.0))
    assert _verdicts(slower)["load → ready ≤"] == "NOT met"  # 0.5, though 0.1 warm
    # both of sdrt's loads are in the cold-start table, labelled
    assert "saved graphs used: mapped" in text
    assert "no saved graphs: every graph optimised at load" in text
    assert "| 64x64 | 2 | torch → ort-cpu → optimum | yes |" in text
    assert "| 1 | p, variant 2 | n, variant 2 |" in text


def test_a_run_that_fell_short_of_its_runs_gives_no_verdict():
    report = _verdict_report(runs=3, warmup=1)
    report["contenders"][2]["results"][0]["runs"] = 2  # Optimum failed in round 3
    verdicts = _verdicts(render_markdown(report))
    assert verdicts["end to end no"] == NO_VERDICT
    assert verdicts["end to end ≥"] == NO_VERDICT  # the run as a whole is judged


def test_skipped_peak_leaves_out_the_share_of_peak_and_says_why():
    jsonschema = pytest.importorskip("jsonschema")
    reason = "--peak-samples 0: the peak matmul rate was not measured"
    roofline = {"status": "skipped", "reason": reason, "unet_batch": 4,
                "flops_per_unet_call": {"64x64": 2 * 10**9}}  # fmt: skip
    report = _verdict_report(runs=3, warmup=1, roofline=roofline)
    for contender in report["contenders"]:
        del contender["results"][0]["roofline"]
    jsonschema.validate(report, REPORT_SCHEMA)
    text = render_markdown(report)
    assert "of peak)" not in text and "(peak not measured)" in text
    assert f"Not measured: {reason}" in text and "64x64 2.00" in text
    assert _verdicts(text)["U-Net step ≥ 75%"] == "not measured"
    no_reason = {k: v for k, v in roofline.items() if k != "reason"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**report, "roofline": no_reason}, REPORT_SCHEMA)


def test_a_busy_machine_is_said_to_be_busy():
    report = _verdict_report(runs=3, warmup=1)
    assert "Load average" not in render_markdown(report)  # older reports: no figure
    report["machine"]["load_average"] = {"start": [1.5, 1.0, 0.5], "end": [0.9, 1.0, 0.8]}
    quiet = render_markdown(report)
    assert quiet.count("Load average (1 min) of the machine: 1.5 at the start, 0.9 at the end") == 1
    assert "Other work" not in quiet
    report["machine"]["load_average"]["start"] = [11.0, 9.0, 6.0]
    assert "**Other work was running beside the benchmark**" in render_markdown(report)


@pytest.mark.parametrize("existing", ["report.json", "report.md"])
def test_an_earlier_report_is_kept_without_force(tmp_path, capsys, monkeypatch, existing):
    from sdrt.benchmarks import harness

    from sdrt.cli import main

    def run_benchmark(*args, **kwargs):
        raise AssertionError("benchmarked before the output was checked")

    monkeypatch.setattr(harness, "run_benchmark", run_benchmark)
    (tmp_path / existing).write_text("an earlier report")
    code = main(["bench", "--arch", "tiny", "--random-weights", "-o", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"sdrt bench: error: -o: {str(tmp_path / existing)!r} already exists; pass --force to "
        "replace it\n"
    )
    assert (tmp_path / existing).read_text() == "an earlier report"
    args = _args("--arch", "tiny", "--random-weights", "-o", str(tmp_path), "--force")
    assert _config(args).output_dir == tmp_path  # --force lets it through


def _summary_rows(text: str, size: str) -> dict[str, dict[str, str]]:
    """{contender: {column: cell}} of report.md's end-to-end table for ``size``."""
    lines = text.splitlines()
    start = lines.index(f"## {size}: end to end") + 2  # the heading, a blank line
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    header, _, *body = [
        [c.strip() for c in line.strip("|").split("|")] for line in lines[start:end]
    ]
    return {cells[0]: dict(zip(header, cells, strict=True)) for cells in body}


def test_the_summary_table_divides_torch_s_time_by_each_contender_s():
    # torch 30 s, ort-cpu 10 s, optimum 11 s end to end (medians)
    text = render_markdown(_verdict_report(runs=3, warmup=1))
    rows = _summary_rows(text, "64x64")
    assert set(rows) == {"torch", "ort-cpu", "optimum"}
    speedup = {name: row["speedup vs torch"] for name, row in rows.items()}
    assert speedup == {"torch": "1.00x", "ort-cpu": "3.00x", "optimum": "2.73x"}
    median = {name: row["end to end (median)"] for name, row in rows.items()}
    assert median == {"torch": "30.00 s", "ort-cpu": "10.00 s", "optimum": "11.00 s"}
