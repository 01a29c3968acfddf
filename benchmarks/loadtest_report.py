"""A load test's report: ``loadtest.json`` (settings, summary, every request),
``loadtest.md`` (the summary as a table) and ``loadtest-latency.png`` (latency over time)."""

from __future__ import annotations

import collections
import dataclasses
import json
import platform
from pathlib import Path

from sdrt.benchmarks.loadtest import LoadConfig, Outcome
from sdrt.benchmarks.stats import percentile


def summarize(outcomes: list[Outcome], wall: float) -> dict:
    statuses = collections.Counter(str(o.status) for o in outcomes)
    accepted = [o for o in outcomes if o.status == 200]
    good = [o for o in accepted if o.problem is None]
    latency = {}
    for name, group in (("ok", good), ("all", outcomes), ("rejected", _rejected(outcomes))):
        seconds = [o.seconds for o in group]
        if seconds:
            latency[name] = {f"p{q}": percentile(seconds, q) for q in (50, 95, 99)}
            latency[name]["max"] = max(seconds)
    return {
        "sent": len(outcomes),
        "statuses": dict(sorted(statuses.items())),
        "accepted": len(accepted),
        "lost": sum(o.status == 0 for o in outcomes),
        "wrong": sum(o.problem is not None for o in accepted),
        "images_per_s": len(good) / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "latency_s": latency,
        "replicas": dict(collections.Counter(o.replica for o in accepted if o.replica)),
    }


def _rejected(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status == 429]


# What write_report writes: `sdrt loadtest` refuses to replace them unasked.
REPORT_FILES = ("loadtest.json", "loadtest.md", "loadtest-latency.png")


def write_report(config: LoadConfig, outcomes: list[Outcome], wall: float, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(outcomes, wall)
    settings = {
        k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()
    }
    settings.pop("api_key")
    report = {
        "settings": settings,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "summary": summary,
        "requests": [
            {k: v for k, v in dataclasses.asdict(o).items() if k != "b64"} for o in outcomes
        ],
    }
    json_file, markdown_file, chart_file = REPORT_FILES
    (out / json_file).write_text(json.dumps(report, indent=2) + "\n")
    (out / markdown_file).write_text(markdown(settings, summary))
    chart(outcomes, out / chart_file)
    return report


def markdown(settings: dict, summary: dict) -> str:
    lat = summary["latency_s"]
    rows = [
        ("requests sent", summary["sent"]),
        ("status counts", ", ".join(f"{k}: {v}" for k, v in summary["statuses"].items())),
        (
            "accepted (200) / lost / wrong",
            f"{summary['accepted']} / {summary['lost']} / {summary['wrong']}",
        ),
        ("images/s", f"{summary['images_per_s']:.2f}"),
        ("wall time", f"{summary['wall_s']:.1f} s"),
    ]
    for name in ("ok", "rejected"):
        if name in lat:
            p = lat[name]
            rows.append(
                (
                    f"latency of {name} requests p50 / p95 / p99",
                    f"{p['p50']:.3f} / {p['p95']:.3f} / {p['p99']:.3f} s",
                )
            )
    if summary["replicas"]:
        rows.append(
            ("answered by replica", ", ".join(f"{k}: {v}" for k, v in summary["replicas"].items()))
        )
    shown = {k: v for k, v in settings.items() if v is not None}
    lines = [
        "# sdrt load test",
        "",
        "Settings: " + ", ".join(f"`{k}={v}`" for k, v in shown.items()),
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
    ]
    return "\n".join(lines)


def chart(outcomes: list[Outcome], path: Path) -> Path | None:
    """Latency against send time, one colour per status; None without matplotlib."""
    try:
        from sdrt.benchmarks.charts import _pyplot

        plt = _pyplot()
    except ModuleNotFoundError:
        return None
    figure, axes = plt.subplots(figsize=(7, 4))
    for status in sorted({o.status for o in outcomes}):
        group = [o for o in outcomes if o.status == status]
        axes.scatter(
            [o.started for o in group],
            [o.seconds for o in group],
            s=10,
            label=str(status or "no answer"),
        )
    axes.set_xlabel("sent at (s after start)")
    axes.set_ylabel("latency (s)")
    axes.legend(title="status")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
