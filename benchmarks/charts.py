"""PNG charts of a report: per-stage stacked bars per contender, latency against image size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STAGES = (
    ("text_encoder_s", "text encoder"),
    ("unet_s", "U-Net (all steps)"),
    ("vae_decode_s", "VAE decode"),
    ("other_s", "everything else"),
)
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#8c8c8c")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _ok_results(report: dict[str, Any]) -> list[tuple[str, dict[str, dict]]]:
    """(contender, {size label: result}) for every contender with measured results."""
    rows = []
    for contender in report["contenders"]:
        results = {r["size"]: r for r in contender["results"]}
        if results:
            rows.append((contender["name"], results))
    return rows


def stage_bars(report: dict[str, Any], path: Path) -> Path | None:
    """One panel per size: a bar per contender, stacked by stage (median seconds)."""
    rows = _ok_results(report)
    sizes = report["settings"]["sizes"]
    if not rows:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(
        1, len(sizes), figsize=(1.6 + 2.2 * len(rows) * len(sizes), 4.2), squeeze=False
    )
    for axis, size in zip(axes[0], sizes, strict=True):
        names = [name for name, results in rows if size in results]
        bottoms = [0.0] * len(names)
        for (key, label), color in zip(STAGES, COLORS, strict=True):
            heights = [max(dict(rows)[name][size]["stages"][key]["median"], 0.0) for name in names]
            axis.bar(names, heights, bottom=bottoms, label=label, color=color)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        for index, total in enumerate(bottoms):
            axis.annotate(f"{total:.2f} s", (index, total), ha="center", va="bottom", fontsize=8)
        axis.set_title(f"{size}, {report['settings']['steps']} steps")
        axis.set_ylabel("median seconds per image request")
        axis.margins(y=0.12)
    axes[0][-1].legend(loc="upper right", fontsize=8)
    figure.suptitle(f"Time per stage — {report['model']['source']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def latency_vs_size(report: dict[str, Any], path: Path) -> Path | None:
    """End-to-end median latency against pixel count, one line per contender."""
    rows = _ok_results(report)
    if len(report["settings"]["sizes"]) < 2 or not rows:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for name, results in rows:
        points = sorted(
            (r["height"] * r["width"], r["stages"]["end_to_end_s"]["median"], size)
            for size, r in results.items()
        )
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    labels = sorted(
        {(r["height"] * r["width"], size) for _, results in rows for size, r in results.items()}
    )
    axis.set_xticks([pixels for pixels, _ in labels], [size for _, size in labels])
    axis.set_xlabel("image size")
    axis.set_ylabel("end-to-end median seconds")
    axis.set_title(f"Latency against image size, {report['settings']['steps']} steps")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_charts(report: dict[str, Any], out_dir: Path) -> list[str]:
    charts_dir = out_dir / "charts"
    charts_dir.mkdir(parents=True, exist_ok=True)
    written = [
        stage_bars(report, charts_dir / "stages.png"),
        latency_vs_size(report, charts_dir / "latency_vs_size.png"),
    ]
    return [str(path.relative_to(out_dir)) for path in written if path is not None]
