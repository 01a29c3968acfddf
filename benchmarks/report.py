"""Write a benchmark's report: report.json (every figure), report.md (tables first), charts.

report.md leads with what a person reads first: end-to-end latency per contender with its
ratio against torch, the per-stage split with the U-Net's share of the machine's matmul
peak beside its time, cold start and memory, parity, and the issue's targets checked
against the measured figures. Everything in it comes from report.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.benchmarks import fast_mode_targets, fast_modes
from sdrt.benchmarks.charts import write_charts
from sdrt.benchmarks.config import MIN_RUNS_FOR_VERDICT, MIN_WARMUP_FOR_VERDICT
from sdrt.benchmarks.contenders import (
    BASELINE,
    baseline_for,
    exact_reference,
    is_baseline,
    is_peer,
)

PEER = "optimum"
NO_VERDICT = "too few runs for a verdict"
NOT_LIKE_FOR_LIKE = "no verdict: not like for like"


@dataclass(frozen=True)
class Target:
    """A performance target of issue 5, checked for each sdrt contender."""

    text: str
    check: Callable[[dict, dict | None, dict | None], tuple[float | None, bool | None]]
    # False: a figure shown beside the targets for information, never called met or not met
    verdict: bool = True


def _median(record: dict | None, size: str, stage: str) -> float | None:
    if record is None:
        return None
    for result in record["results"]:
        if result["size"] == size and stage in result["stages"]:
            return result["stages"][stage]["median"]
    return None


def _result(record: dict | None, size: str) -> dict | None:
    if record is None:
        return None
    return next((r for r in record["results"] if r["size"] == size), None)


def _targets(size: str) -> list[Target]:
    def speedup(sdrt, torch, _):
        ours, theirs = _median(sdrt, size, "end_to_end_s"), _median(torch, size, "end_to_end_s")
        value = theirs / ours if ours and theirs else None
        return value, None if value is None else value >= 2.3

    def versus_peer(sdrt, _, peer):
        ours, theirs = _median(sdrt, size, "end_to_end_s"), _median(peer, size, "end_to_end_s")
        value = ours / theirs if ours and theirs else None
        return value, None if value is None else value <= 1.0

    def load_like_for_like(sdrt, _, peer):
        # sdrt optimising every graph at load, as Optimum does on every load
        unsaved = sdrt.get("load_without_saved_graphs") or {}
        ours = unsaved.get("load_to_ready_s") if unsaved.get("status") == "ok" else None
        theirs = ((peer or {}).get("cold_start") or {}).get("load_to_ready_s")
        value = ours / theirs if ours and theirs else None
        return value, None if value is None else value <= 0.25

    def load_saved_graphs(sdrt, _, peer):
        ours = (sdrt.get("cold_start") or {}).get("load_to_ready_s")
        theirs = ((peer or {}).get("cold_start") or {}).get("load_to_ready_s")
        value = ours / theirs if ours and theirs else None
        return value, None if value is None else value <= 0.25

    def roofline(sdrt, _, __):
        value = ((_result(sdrt, size) or {}).get("roofline") or {}).get("fraction_of_peak")
        return value, None if value is None else value >= 0.75

    def overhead(sdrt, _, __):
        value = (_result(sdrt, size) or {}).get("other_fraction")
        return value, None if value is None else value < 0.01

    def parity(sdrt, _, __):
        found = (_result(sdrt, size) or {}).get("parity")
        if found is None:
            return None, None
        value = math.inf if found["identical"] else found["psnr_db"]
        return value, value >= 40

    return [
        Target("end to end ≥ 2.3x faster than torch (ratio)", speedup),
        Target("end to end no slower than Optimum (time ratio ≤ 1)", versus_peer),
        Target(
            "load → ready ≤ 1/4 of Optimum's, like for like: sdrt without saved graphs, both "
            "optimising the graphs at load (ratio)",
            load_like_for_like,
        ),
        Target(
            "load → ready from the graphs an untimed `sdrt build` saved, against Optimum's "
            "optimising load (ratio, for information)",
            load_saved_graphs,
            verdict=False,
        ),
        Target("U-Net step ≥ 75% of peak matmul rate (fraction)", roofline),
        Target("everything but the models < 1% of end to end (fraction)", overhead),
        Target("parity PSNR vs torch ≥ 40 dB", parity),
    ]


# ------------------------------------------------------------------------------ formatting


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def size_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    if value >= 1 << 30:
        return f"{value / (1 << 30):.2f} GiB"
    return f"{value / (1 << 20):.0f} MiB"


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def psnr(parity: dict | None) -> str:
    if parity is None:
        return "—"
    if parity["identical"]:
        return "identical"
    return f"{parity['psnr_db']:.1f} dB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


# ------------------------------------------------------------------------------ sections


def _summary(report: dict, size: str) -> list[str]:
    by_name = {c["name"]: c for c in report["contenders"]}
    names = tuple(by_name)
    rows = []
    for contender in report["contenders"]:
        # eager diffusers on the same VAE (torch+tinyvae for a tinyvae contender) if it ran;
        # torch's own row shows 1.00x
        name = contender["name"]
        torch = by_name.get(name if name == BASELINE else baseline_for(name, names))
        baseline = _median(torch, size, "end_to_end_s")
        result = _result(contender, size)
        if result is None:
            error = contender.get("error", "no measured run")
            rows.append([contender["name"], contender["status"], f"{error}"] + ["—"] * 9)
            continue
        stages = result["stages"]
        end_to_end = stages["end_to_end_s"]["median"]
        step = stages.get("unet_step_s", {}).get("median")
        fraction = (result.get("roofline") or {}).get("fraction_of_peak")
        if report["roofline"]["status"] == "skipped":
            step_text = f"{seconds(step)} (peak not measured)"
        else:
            step_text = f"{seconds(step)} ({percent(fraction)} of peak)"
        rows.append(
            [
                contender["name"],
                contender["status"],
                seconds(end_to_end),
                ratio(baseline / end_to_end) if baseline else "—",
                f"{result['images_per_s']:.3f}",
                step_text,
                seconds(stages["text_encoder_s"]["median"]),
                seconds(stages["vae_decode_s"]["median"]),
                f"{seconds(stages['other_s']['median'])} ({percent(result['other_fraction'])})",
                psnr(result.get("parity")),
                "—" if "parity" not in result else f"{result['parity']['max_abs_diff']:.2e}",
                str(result["runs"]),
            ]
        )
    header = [
        "contender",
        "status",
        "end to end (median)",
        "speedup vs torch",
        "images/s",
        "U-Net per step",
        "text encoder",
        "VAE decode",
        "everything else",
        "PSNR vs torch",
        "max abs diff",
        "runs",
    ]
    lines = [f"## {size}: end to end", "", *_table(header, rows)]
    if any(is_baseline(name) and name != BASELINE for name in names):
        lines += [
            "Torch is eager diffusers on the same VAE: `torch+tinyvae` (diffusers' "
            "AutoencoderTiny as the pipeline's VAE) for the contenders with a tiny VAE, the "
            "same recipe; `torch` for the others.",
            "",
        ]
    return lines


def _fast_modes(report: dict, size: str) -> list[str]:
    """Each fast-mode contender against exact sdrt on its backend and against torch: its
    speedups, and its image against exact sdrt's on the same latents."""
    by_name = {c["name"]: c for c in report["contenders"]}
    names = tuple(by_name)
    rows = []
    for contender in report["contenders"]:
        exact_name_ = exact_reference(contender["name"], names)
        result = _result(contender, size)
        if exact_name_ is None or result is None:
            continue
        exact = by_name.get(exact_name_)
        torch = by_name.get(baseline_for(contender["name"], names))
        mine = {s: _median(contender, size, s) for s in ("end_to_end_s", "unet_s")}

        def speedup(other, stage, mine=mine):
            theirs = _median(other, size, stage)
            return ratio(theirs / mine[stage] if theirs and mine[stage] else None)

        versus = result.get("versus_exact")
        rows.append(
            [
                contender["name"],
                seconds(mine["end_to_end_s"]),
                speedup(exact, "end_to_end_s"),
                speedup(torch, "end_to_end_s"),
                seconds(mine["unet_s"]),
                speedup(exact, "unet_s"),
                psnr(versus),
                "—" if versus is None else f"{versus['max_abs_diff']:.2e}",
                psnr(result.get("parity")),
            ]
        )
    if not rows:
        return []
    header = [
        "contender",
        "end to end",
        "speedup vs exact sdrt",
        "speedup vs torch",
        "U-Net (all steps)",
        "U-Net speedup vs exact",
        "PSNR vs exact sdrt",
        "max abs diff vs exact",
        "PSNR vs torch",
    ]
    note = (
        "Exact sdrt is the same backend without modes, on the same latents; for a peer "
        "(Optimum, Optimum-Intel) sdrt's openvino contender, else ort-cpu. With random "
        "weights the PSNR figures are only a guide to what real weights lose."
    )
    return [f"## {size}: fast modes", "", note, "", *_table(header, rows)]


def _distributions(report: dict, size: str) -> list[str]:
    stages = [
        ("end_to_end_s", "end to end"),
        ("text_encoder_s", "text encoder"),
        ("unet_step_s", "U-Net per step"),
        ("unet_s", "U-Net all steps"),
        ("vae_decode_s", "VAE decode"),
        ("other_s", "everything else"),
    ]
    rows = []
    for contender in report["contenders"]:
        result = _result(contender, size)
        if result is None:
            continue
        for key, label in stages:
            if key in result["stages"]:
                s = result["stages"][key]
                values = [seconds(s[q]) for q in ("median", "p90", "min", "max")]
                rows.append([contender["name"], label, *values, str(s["count"])])
    header = ["contender", "stage", "median", "p90", "min", "max", "samples"]
    return [f"### {size}: latency distribution", "", *_table(header, rows)]


def load_label(contender: dict) -> str:
    """How a contender's own start loaded, from the settings it reported."""
    settings = (contender.get("cold_start") or {}).get("load_settings") or {}
    if "saved_optimised_graphs" in settings:
        return "saved graphs " + settings["saved_optimised_graphs"]
    if "graph_optimization" in settings:
        return "graphs optimised: " + settings["graph_optimization"]
    return "—"


def _cold_start(report: dict) -> list[str]:
    rows = []
    for contender in report["contenders"]:
        cold = contender.get("cold_start") or {}
        installed = contender.get("installed") or {}
        rows.append(
            [
                contender["name"],
                load_label(contender),
                seconds(cold.get("import_s")),
                seconds(cold.get("load_to_ready_s")),
                seconds(cold.get("process_start_to_first_image_s")),
                size_bytes(contender.get("peak_rss_bytes")),
                size_bytes(installed.get("bytes")),
                str(len(installed.get("distributions", {})) or "—"),
            ]
        )
        unsaved = contender.get("load_without_saved_graphs")
        if unsaved is None:
            continue
        if unsaved["status"] != "ok":
            label = f"failed: {unsaved['error']}"
            rows.append([contender["name"], label, "—", "—", "—", "—", "—", "—"])
            continue
        rows.append(
            [
                contender["name"],
                "no saved graphs: every graph optimised at load (load-only process)",
                seconds(unsaved["import_s"]),
                seconds(unsaved["load_to_ready_s"]),
                "—",
                "—",
                "—",
                "—",
            ]
        )
    header = [
        "contender",
        "load",
        "import",
        "load → ready",
        "process start → first image",
        "peak RSS",
        "installed size",
        "distributions",
    ]
    return ["## Cold start, memory, install size", "", *_table(header, rows)]


def verdict_minimum(report: dict) -> dict[str, int]:
    """The fewest measured runs and warm-ups a verdict needs (older reports: today's)."""
    return report.get(
        "verdict_minimum", {"runs": MIN_RUNS_FOR_VERDICT, "warmup": MIN_WARMUP_FOR_VERDICT}
    )


def asked_enough_runs(report: dict) -> bool:
    """Whether the run asked for the measured runs and warm-ups a verdict needs."""
    minimum, settings = verdict_minimum(report), report["settings"]
    return settings["runs"] >= minimum["runs"] and settings["warmup"] >= minimum["warmup"]


def enough_runs(report: dict, size: str, compared: list[dict | None]) -> bool:
    """Whether the run asked for enough runs and warm-ups, and each compared contender made
    the measured runs at ``size``, that a met / not met verdict needs."""
    minimum = verdict_minimum(report)
    if not asked_enough_runs(report):
        return False
    runs = [r["runs"] for c in compared if c for r in c["results"] if r["size"] == size]
    return all(count >= minimum["runs"] for count in runs)


def verdict(target: Target, met: bool | None, enough: bool) -> str:
    if met is None:
        return "not measured"
    if not target.verdict:
        return NOT_LIKE_FOR_LIKE
    if not enough:
        return NO_VERDICT
    return "met" if met else "NOT met"


def _target_section(report: dict) -> list[str]:
    by_name = {c["name"]: c for c in report["contenders"]}
    torch, peer = by_name.get(BASELINE), by_name.get(PEER)
    # issue 5's targets are exact sdrt's; the fast modes have issue 14's (below)
    ours = [
        c
        for c in report["contenders"]
        if c["name"] != BASELINE
        and not is_peer(c["name"])
        and fast_modes.exact_name(c["name"]) is None
    ]
    minimum = verdict_minimum(report)
    settings = report["settings"]
    lines = [
        "## Targets (issue 5)",
        "",
        f"A verdict needs at least {minimum['runs']} measured runs of every contender compared "
        f"after at least {minimum['warmup']} warm-up(s); this run asked for "
        f"{settings['runs']} after {settings['warmup']}. Load → ready is one load of each "
        "contender. The load target compares like with like: Optimum optimises the graphs on "
        "every load, so sdrt's figure is its load without saved graphs (every graph optimised "
        "at load, measured alone before the contenders start); its usual load, which maps "
        "the graphs an untimed `sdrt build --target ort-cpu` saved, is shown for information.",
        "",
    ]
    for size in settings["sizes"]:
        rows = []
        for contender in ours:
            enough = enough_runs(report, size, [contender, torch, peer])
            for target in _targets(size):
                value, met = target.check(contender, torch, peer)
                shown = "—" if value is None else f"{value:.3g}"
                rows.append(
                    [contender["name"], size, target.text, shown, verdict(target, met, enough)]
                )
        lines += _table(["contender", "size", "target", "measured", "verdict"], rows)
    if report["roofline"]["status"] == "skipped":
        lines += [f"Share of peak not measured: {report['roofline']['reason']}.", ""]
    return lines


def _fast_mode_target_section(report: dict) -> list[str]:
    checked = fast_mode_targets.check_targets(report)
    if not checked:
        return []
    by_name = {c["name"]: c for c in report["contenders"]}
    rows = []
    for item in checked:
        enough = enough_runs(
            report, item.size, [by_name[item.contender], by_name.get(item.against)]
        )
        if item.met is None:
            shown = "not measured"
        elif not item.applies:
            shown = "for information: the target is stated for another size or step count"
        elif not enough:
            shown = NO_VERDICT
        else:
            shown = "met" if item.met else "NOT met"
        value = "—" if item.value is None else f"{item.value:.3g}"
        rows.append([item.contender, item.size, item.target.text, item.against, value, shown])
    note = (
        "Each target is checked on the contender with exactly its modes, against the "
        "contender named (exact sdrt is the bare backend). With random weights the quality "
        "figures beside them (fast modes table) are only a guide."
    )
    header = ["contender", "size", "target", "against", "measured", "verdict"]
    return ["## Targets (issue 14: fast modes)", "", note, "", *_table(header, rows)]


def _failures(report: dict) -> list[str]:
    failed = [c for c in report["contenders"] if c["status"] != "ok"]
    if not failed:
        return []
    rows = [[c["name"], c["status"], c.get("failed_stage", ""), c["error"]] for c in failed]
    return [
        "## Contenders that did not run",
        "",
        *_table(["contender", "status", "at", "why"], rows),
    ]


def _roofline(report: dict) -> list[str]:
    roofline = report["roofline"]
    lines = ["## Roofline", ""]
    if roofline["status"] == "skipped":
        flops = ", ".join(
            f"{size} {value / 1e9:.2f}" for size, value in roofline["flops_per_unet_call"].items()
        )
        return lines + [
            f"Not measured: {roofline['reason']}. GFLOP per U-Net call at batch "
            f"{roofline['unet_batch']}: {flops or '—'}.",
            "",
        ]
    if roofline["status"] != "ok":
        return lines + [f"Not measured: {roofline.get('error')}", ""]
    peak = roofline["peak"]
    lines.append(
        f"Peak matmul rate measured on this machine: **{peak['peak_flops_per_s'] / 1e9:.1f} "
        f"GFLOP/s** ({peak['method']}; numpy {peak['numpy_flops_per_s'] / 1e9:.1f}, torch "
        f"{peak['torch_flops_per_s'] / 1e9:.1f} GFLOP/s, {peak['threads']} threads)."
    )
    samples = peak.get("samples_flops_per_s", [])
    if len(samples) > 1:
        lines[-1] += (
            f" The samples ranged from {min(samples) / 1e9:.1f} to {max(samples) / 1e9:.1f} "
            "GFLOP/s: compare the U-Net's share of the peak within a report, not across."
        )
    lines.append("")
    rows = []
    for size, flops in roofline["flops_per_unet_call"].items():
        for contender in report["contenders"]:
            result = _result(contender, size)
            if result is None or "roofline" not in result:
                continue
            rows.append(
                [
                    size,
                    f"{flops / 1e9:.2f}",
                    contender["name"],
                    seconds(result["stages"]["unet_step_s"]["median"]),
                    f"{result['roofline']['achieved_flops_per_s'] / 1e9:.1f}",
                    percent(result["roofline"]["fraction_of_peak"]),
                ]
            )
    header = ["size", "GFLOP per U-Net call", "contender", "U-Net call", "GFLOP/s", "of peak"]
    lines += _table(header, rows)
    lines.append(
        f"FLOPs counted with {roofline.get('flop_count_method', '?')} at U-Net batch "
        f"{roofline['unet_batch']} (classifier-free guidance doubles the batch)."
    )
    return lines + [""] + _speedup_bound(report)


def speedup_bound(
    contender: dict, torch: dict, size: str, flops: float, peak: float
) -> dict[str, float] | None:
    """The end-to-end speedup over torch a contender would reach with its U-Net at 100% of
    the peak matmul rate and its other stages as measured: what kernels alone could give."""
    result = _result(contender, size)
    ours = _median(contender, size, "end_to_end_s")
    unet = _median(contender, size, "unet_s")
    theirs = _median(torch, size, "end_to_end_s")
    if result is None or None in (ours, unet, theirs) or not peak:
        return None
    at_peak = ours - unet + result["unet_calls_per_run"] * flops / peak
    return {"end_to_end_at_peak_s": at_peak, "speedup_at_peak": theirs / at_peak}


def _speedup_bound(report: dict) -> list[str]:
    roofline = report["roofline"]
    by_name = {c["name"]: c for c in report["contenders"]}
    torch = by_name.get(BASELINE)
    if torch is None:
        return []
    peak = roofline["peak"]["peak_flops_per_s"]
    lines = []
    for size, flops in roofline["flops_per_unet_call"].items():
        for contender in report["contenders"]:
            if is_baseline(contender["name"]):
                continue
            bound = speedup_bound(contender, torch, size, flops, peak)
            if bound is None:
                continue
            lines.append(
                f"- {contender['name']} at {size}: with its U-Net at 100% of the peak and its "
                f"other stages as measured, end to end would take "
                f"{seconds(bound['end_to_end_at_peak_s'])}, "
                f"{bound['speedup_at_peak']:.2f}x faster than torch at most."
            )
    if not lines:
        return []
    return ["Upper bound of the speedup at this precision:", "", *lines, ""]


def _schedulers(report: dict) -> list[str]:
    """One line per scheduler: sdrt's numpy step against diffusers' torch step."""
    bench = report["scheduler_bench"]
    lines = ["## Scheduler micro-benchmark", ""]
    if bench["status"] != "ok":
        return lines + [f"Not measured: {bench.get('error')}", ""]
    rows = bench["rows"]
    if not rows:
        return lines + ["No rows.", ""]
    by_scheduler: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_scheduler.setdefault(row["scheduler"], {})[row["backend"]] = row
    body = []
    for name, backends in by_scheduler.items():
        ours, theirs = backends.get("sdrt-numpy"), backends.get("diffusers-torch")
        body.append(
            [
                name,
                "—" if ours is None else f"{ours['us_per_step']:.1f}",
                "—" if theirs is None else f"{theirs['us_per_step']:.1f}",
                ratio(theirs["us_per_step"] / ours["us_per_step"]) if ours and theirs else "—",
                "—" if ours is None else percent(ours["share_of_unet_call"]),
            ]
        )
    first = rows[0]
    header = [
        "scheduler",
        "sdrt numpy µs/step",
        "diffusers torch µs/step",
        "sdrt speedup",
        "sdrt loop / one U-Net call",
    ]
    return [
        *lines,
        *_table(header, body),
        f"Latents {first['shape']}, {first['steps']} steps, median of {first['repeats']} loops; "
        f"the yardstick U-Net call is {seconds(first['unet_call_s'])}.",
        "",
    ]


def _settings_that_ran(report: dict) -> list[str]:
    rows = []
    for contender in report["contenders"]:
        settings = contender.get("settings") or {}
        text = ", ".join(f"{k}={v}" for k, v in settings.items()) or "—"
        rows.append([contender["name"], text, contender["log"]])
    return [
        "## Settings each contender ran with",
        "",
        *_table(["contender", "settings", "log"], rows),
    ]


def _versions(report: dict) -> list[str]:
    lines = ["## Versions", ""]
    harness = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines.append(f"- harness: {harness}")
    for contender in report["contenders"]:
        if contender.get("versions"):
            text = ", ".join(f"{k} {v}" for k, v in contender["versions"].items())
            lines.append(f"- {contender['name']}: {text}")
    return lines + [""]


def _workload(report: dict) -> list[str]:
    """The prompts every contender got, and the order the contenders ran in each round."""
    settings = report["settings"]
    prompts = settings["prompts"]
    negatives = settings.get("negative_prompts") or [settings["negative_prompt"]] * len(prompts)
    lines = [
        "## Prompts and round order",
        "",
        f"Each call makes {settings['batch']} image(s), one per prompt below; every contender "
        "got the same prompts (distinct across the batch, so no contender encodes fewer rows).",
        "",
        *_table(
            ["image", "prompt", "negative prompt"],
            [[str(i), p, n] for i, (p, n) in enumerate(zip(prompts, negatives, strict=True))],
        ),
    ]
    order = report.get("round_order")
    if order:
        rows = [
            [
                r["size"],
                str(r["run"] + 1),
                " → ".join(r["order"]),
                "yes" if r["peak_sampled"] else "",
            ]
            for r in order["rounds"]
        ]
        lines += [
            f"Measured rounds, one run of each contender a round: {order['method']}.",
            "",
            *_table(["size", "round", "order", "peak sampled after"], rows),
        ]
    return lines


def _machine_load(report: dict) -> list[str]:
    """The machine's load average around the run: other work there makes timings noisy."""
    machine = report["machine"]
    load = machine.get("load_average") or {}
    start, end = load.get("start"), load.get("end")
    if not start or not end:
        return []
    cpus = machine["logical_cpus"]
    line = (
        f"Load average (1 min) of the machine: {start[0]:.1f} at the start, {end[0]:.1f} at "
        f"the end, on {cpus} logical CPUs."
    )
    if max(start[0], end[0]) > cpus:
        line += (
            " **Other work was running beside the benchmark**: timings are noisy, and a "
            "contender whose threads wait on each other (torch's) can suffer more than the "
            "others; compare within this report only."
        )
    return [line, ""]


def render_markdown(report: dict) -> str:
    settings, machine = report["settings"], report["machine"]
    lines = [
        f"# sdrt bench — {report['model']['source']}",
        "",
        f"{', '.join(settings['sizes'])}, {settings['steps']} steps, batch {settings['batch']} "
        f"(images per call), guidance {settings['guidance']}, {settings['scheduler']}, "
        f"{settings['precision']}, {settings['runs']} measured run(s) after "
        f"{settings['warmup']} warm-up(s), interleaved; {machine['threads']} threads on "
        f"{machine['cpu_model']} ({machine['logical_cpus']} logical CPUs). "
        f"Started {report['started']}.",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    lines += _machine_load(report)
    if not asked_enough_runs(report):
        minimum = verdict_minimum(report)
        lines += [
            f"**Too few runs for a verdict**: {settings['runs']} measured run(s) after "
            f"{settings['warmup']} warm-up(s); met / not met needs at least {minimum['runs']} "
            f"after {minimum['warmup']}. The figures below come from that few samples.",
            "",
        ]
    for size in settings["sizes"]:
        lines += _summary(report, size)
        lines += _fast_modes(report, size)
    lines += _cold_start(report)
    lines += _target_section(report)
    lines += _fast_mode_target_section(report)
    lines += _failures(report)
    for chart in report["charts"]:
        lines += [f"![{Path(chart).stem}]({chart})", ""]
    for size in settings["sizes"]:
        lines += _distributions(report, size)
    lines += _roofline(report)
    lines += _schedulers(report)
    images = [
        f"![{c['name']} {r['size']}]({r['image']})"
        for c in report["contenders"]
        for r in c["results"]
        if "image" in r
    ]
    if images:
        lines += [
            "## Images (first of each contender's first measured run)",
            "",
            " ".join(images),
            "",
        ]
    lines += _workload(report)
    lines += _settings_that_ran(report)
    lines += _versions(report)
    return "\n".join(lines)


# What write_report writes beside the charts: `sdrt bench` refuses to replace them unasked.
REPORT_FILES = ("report.json", "report.md")


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write charts, report.json and report.md into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report["charts"] = write_charts(report, out_dir)
    json_path = out_dir / REPORT_FILES[0]
    json_path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    markdown_path = out_dir / REPORT_FILES[1]
    markdown_path.write_text(render_markdown(report))
    return {"json": json_path, "markdown": markdown_path}
