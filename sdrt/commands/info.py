"""``sdrt info FOLDER``: what a model folder holds, as readable tables (no torch needed).

The "build check" column is the export's verification, measured once at build time and read
from sdrt.json; it says nothing about the files as they are now. ``--verify`` hashes every
file named in sdrt.json and compares it with its recorded sha256, and every file of the
saved ONNX Runtime graphs and every engine plan with the sha256 recorded when it was
written (exit 2 on a mismatch).
Without it, only the files' presence and sizes are looked at.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "Show a model folder's manifest: components, files, sizes, precisions, I/O, verification, engines."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", metavar="FOLDER", type=Path, help="a model folder made by sdrt build"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="hash every file and compare it with its sha256 in sdrt.json (and the saved ONNX "
        "Runtime graphs and engine plans with theirs, recorded when written); exit 2 on a "
        "mismatch",
    )


def run(args: argparse.Namespace) -> int:
    from sdrt.errors import ModelFolderError
    from sdrt.integrity import check_files
    from sdrt.manifest import MANIFEST_NAME, read_manifest

    manifest = read_manifest(args.folder)
    if args.verify:
        print(
            f"hashing the files named in {MANIFEST_NAME}, the saved graphs and the engine "
            "plans ...",
            file=sys.stderr,
            flush=True,
        )
    checks = check_files(args.folder, manifest, "always" if args.verify else "never")
    bad = [c for c in checks if not c.ok] if args.verify else []
    try:
        print(format_info(args.folder, manifest, checks, verified=args.verify))
        sys.stdout.flush()  # the tables before the error line
    except BrokenPipeError:
        if not bad:
            raise
        # `sdrt info --verify X | head`: the reader went away, the mismatch is still said
    graphs = [c for c in bad if not (c.saved_graph or c.engine_plan)]
    if graphs:
        raise ModelFolderError(
            f"{args.folder}: {len(bad)} of {len(checks)} files do not match their sha256 in "
            f"{MANIFEST_NAME}: "
            + "; ".join(c.problem() for c in graphs)
            + " (rebuild, or restore the original files)"
            + "".join(f"; {c.problem()}" for c in bad if c not in graphs)
        )
    if bad:
        remedies = []
        if any(c.saved_graph for c in bad):
            remedies.append(
                "saved ONNX Runtime graphs: the next load removes them and writes them again"
            )
        if any(c.engine_plan for c in bad):
            remedies.append(f"engine plans: rebuild them with `sdrt engines build {args.folder}`")
        raise ModelFolderError(
            f"{args.folder}: {len(bad)} of {len(checks)} files do not match the sha256 recorded "
            "when they were written: "
            + "; ".join(c.problem() for c in bad)
            + f" ({'; '.join(remedies)})"
        )
    return 0


def format_info(folder: Path, manifest, checks=(), *, verified: bool = False) -> str:
    """The tables; ``checks`` are sdrt.integrity.check_files results, hashed if ``verified``."""
    lines = _summary_lines(folder, manifest)
    lines += _table(_component_rows(folder, manifest))
    lines.append(
        "build check    the export's errors (ONNX Runtime vs PyTorch) measured at build time"
    )
    lines += _file_lines(checks, verified)
    lines.append("")
    io_rows = [("component", "", "name", "dtype", "shape")]
    for comp in manifest.components.values():
        for kind, specs in (("in", comp.inputs), ("out", comp.outputs)):
            for spec in specs:
                shape = "[" + ", ".join(str(d) for d in spec.shape) + "]"
                io_rows.append((comp.name, kind, spec.name, spec.dtype, shape))
    lines += _table(io_rows)
    lines.append("")
    if not manifest.engines:
        lines.append("engines        none built")
    else:
        engine_rows = [("engine", "component", "path", "cache key", "device")]
        for e in manifest.engines:
            device = str(e.device.get("name", "")) if e.device else ""
            engine_rows.append((e.target, e.component, e.path, e.cache_key[:16], device))
        lines += _table(engine_rows)
    return "\n".join(lines)


def _summary_lines(folder: Path, manifest) -> list[str]:
    b = manifest.build
    shift = (
        f", shift {manifest.vae_shift_factor:g}" if manifest.vae_shift_factor is not None else ""
    )
    revision = f" @ {manifest.source.revision}" if manifest.source.revision else ""
    return [
        f"model folder   {folder}",
        f"source         {manifest.source.path_or_id}{revision}"
        f"  (content sha256 {manifest.source.content_sha256[:12]})",
        *_single_file_lines(manifest.source.single_file),
        f"family         {manifest.family}, prediction {manifest.prediction_type}, "
        # What generate makes without --size, and what it accepts; the model's own sample
        # size only as a note (a folder built with --min-size above it never makes that).
        f"default size {b.opt_size} px (sizes {b.min_size}..{b.max_size} px; the model's "
        f"sample size is {manifest.default_image_size} px)",
        f"latents        {manifest.latent_channels} channels, VAE scale {manifest.vae_scale_factor}, "
        f"scaling factor {manifest.vae_scaling_factor:g}{shift}"
        f", U-Net in channels {manifest.unet_in_channels}",
        f"build          sizes {b.min_size}..{b.max_size} px (opt {b.opt_size}, multiple of "
        f"{b.size_multiple}), batch {b.min_batch}..{b.max_batch} (opt {b.opt_batch}), "
        f"{b.precision} (VAE {b.vae_precision}), opset {b.opset}",
        f"tokenizers     {', '.join(manifest.tokenizers)}",
        _recipe_line(manifest),
        *_adoption_lines(manifest.adoption),
        *_correction_lines(manifest),
        *_adapter_lines(manifest),
        _deep_cache_line(manifest),
        *_tiny_vae_lines(manifest.tiny_vae),
        *_controlnet_lines(manifest),
        _t2i_adapter_line(manifest),
        *_quantization_lines(manifest),
        *_tome_lines(manifest),
        "",
    ]


def _recipe_line(manifest) -> str:
    """The distilled model's recipe (sdrt build), which calls leaving settings out take."""
    if manifest.recipe is None:
        return (
            "recipe         none (calls default to 20 steps, guidance 7.5, the folder's scheduler)"
        )
    from sdrt.recipes import describe

    return f"recipe         {describe(manifest.recipe)}"


def _deep_cache_line(manifest) -> str:
    """The DeepCache branches the folder was built for (sdrt build --deep-cache)."""
    built = manifest.deep_cache
    if built is None:
        return "deep cache     not built (sdrt build --deep-cache)"
    shallow = ", ".join(f"{b.branch}: {b.component}" for b in built.branches)
    return f"deep cache     branches {list(built.branch_ids)} (shallow U-Nets {shallow})"


def _controlnet_lines(manifest) -> list[str]:
    """The ControlNets built into the folder (sdrt build --controlnet), in build order."""
    if not manifest.controlnets:
        return ["controlnets    none (build with --controlnet [NAME=]FOLDER for control images)"]
    from sdrt.manifest import CONTROLNET_UNET

    lines = [f"controlnets    {len(manifest.controlnets)}, residuals into {CONTROLNET_UNET}"]
    for c in manifest.controlnets:
        revision = f" @ {c.source.revision}" if c.source.revision else ""
        pooled = ", pooled (guess mode)" if c.global_pool_conditions else ""
        lines.append(
            f"  {c.name:<12} {c.component} from {c.source.path_or_id}{revision} (content sha256 "
            f"{c.source.content_sha256[:12]}), {c.conditioning_channels} conditioning "
            f"channels{pooled}"
        )
    return lines


def _t2i_adapter_line(manifest) -> str:
    """The T2I-Adapter built into the folder (sdrt build --t2i-adapter)."""
    adapter = getattr(manifest, "t2i_adapter", None)
    if adapter is None:
        return "t2i adapter    none (build with --t2i-adapter [NAME=]FOLDER for adapter images)"
    from sdrt.manifest import ADAPTER_UNET

    revision = f" @ {adapter.source.revision}" if adapter.source.revision else ""
    return (
        f"t2i adapter    {adapter.name}: {adapter.component} from {adapter.source.path_or_id}"
        f"{revision} (content sha256 {adapter.source.content_sha256[:12]}), "
        f"{adapter.adapter_type}, {adapter.in_channels} input channel(s), "
        f"{adapter.features} features into {ADAPTER_UNET}"
    )


def _tiny_vae_lines(tiny) -> list[str]:
    """The tiny VAE built beside the full one (sdrt build --tiny-vae), chosen per call."""
    if tiny is None:
        return ["tiny VAE       none (build with --tiny-vae FOLDER to decode with TAESD)"]
    revision = f" @ {tiny.source.revision}" if tiny.source.revision else ""
    graphs = ", ".join(n for n in (tiny.decoder, tiny.encoder) if n)
    return [
        f"tiny VAE       {tiny.class_name} from {tiny.source.path_or_id}{revision} (content "
        f"sha256 {tiny.source.content_sha256[:12]}), scaling factor {tiny.scaling_factor:g}; "
        f"graphs {graphs}; used by calls with vae='tiny' (generate --vae tiny)"
    ]


def _adoption_lines(adoption) -> list[str]:
    """An adopted folder (sdrt adopt): who exported it, what was checked instead of a build's
    verification against PyTorch."""
    if adoption is None:
        return []
    passes = ", ".join(c.component for c in adoption.forward_checks)
    lines = [
        f"adopted        {adoption.layout} export ({adoption.exporter}); checked: graphs load, "
        f"I/O, one finite forward pass each ({passes}); not verified against PyTorch"
    ]
    return lines + [f"note           {note}" for note in adoption.notes]


def _single_file_lines(record) -> list[str]:
    """How a single-file source was read (export/single_file.py's record in sdrt.json)."""
    if not record:
        return []
    return [
        f"single file    {record.get('layout')} layout, {record.get('family')}; configs from "
        f"{record.get('config_kind')} {record.get('config')} ({record.get('config_chosen')}), "
        f"tokenizer {record.get('tokenizer')}, prediction type from "
        f"{record.get('prediction_type_from')}"
    ]


def _correction_lines(manifest) -> list[str]:
    """The outdated-config rewrites the build made as diffusers' pipelines do (sdrt.json)."""
    if not manifest.config_corrections:
        return ["corrections    none (the configs are as the source wrote them)"]
    lines = []
    for n, c in enumerate(manifest.config_corrections):
        old = "absent" if c.old is None else json.dumps(c.old)
        if c.old is None:
            old += f" (default {json.dumps(c.old_effective)})"
        label = "corrections" if n == 0 else ""
        lines.append(
            f"{label:15s}{c.component} {c.key}: {old} -> {json.dumps(c.new)}  ({c.reason})"
        )
    return lines


def _tome_lines(manifest) -> list[str]:
    """Token merging baked into the U-Net at build time (sdrt build --tome-ratio)."""
    t = manifest.tome
    if not t:
        return []
    return [
        f"token merging  ToMe in the U-Net, every call: ratio {t['ratio']:g}, max downsample "
        f"{t['max_downsample']}, stride {t['sx']}x{t['sy']}, deterministic ({t['reference']})"
    ]


def _adapter_lines(manifest) -> list[str]:
    """Adapters applied at build time (sdrt build --lora / --embedding), in order."""
    lines = []
    for a in manifest.adapters:
        what = f"LoRA fused at scale {a.scale:g}" if a.kind == "lora" else "embedding"
        tokens = f", tokens {' '.join(a.tokens)}" if a.tokens else ""
        lines.append(f"adapter        {what}: {a.file} (sha256 {a.sha256[:12]}){tokens}")
    return lines


def _quantization_lines(manifest) -> list[str]:
    """An int8 component's quantization and calibration: its ONNX graph's
    (engines/int8_unet.py), or its OpenVINO IR's (engines/int8_unet_nncf.py)."""
    lines = []
    for comp in manifest.components.values():
        if comp.quantization:
            lines += _quantized_lines(comp.name, comp.quantization, comp.verification)
        if comp.openvino is not None:
            ir = comp.openvino
            lines.append(
                f"openvino       {comp.name}: {ir.file} ({ir.precision}, OpenVINO "
                f"{ir.openvino_version}; run by backend openvino, the ONNX graph stays "
                f"{comp.precision})"
            )
            lines += _quantized_lines(comp.name, ir.quantization, ir.verification)
    return lines


def _seven_bit_note(q) -> str:
    """The ONNX Runtime method's ``reduce_range`` and NNCF's ``overflow_fix: enable`` are
    the same choice (7-bit weights), made where the build CPU lacks VNNI."""
    if q.get("reduce_range"):
        return " (7-bit range: built on a CPU without VNNI)"
    if q.get("overflow_fix") == "enable":
        return " (7-bit range, NNCF overflow fix: built on a CPU without VNNI)"
    return ""


def _quantized_lines(name: str, q, verification) -> list[str]:
    cal, kept = q.get("calibration", {}), q.get("kept_fp32", {})
    steps = cal.get("timesteps", [])
    op_types = q.get("op_types")
    lines = [
        f"quantization   {name}: {q.get('method')}; activations {q.get('activations')}, "
        f"weights {q.get('weights')}"
        f"{_seven_bit_note(q)}" + (f"; quantized {', '.join(op_types)}" if op_types else ""),
        f"               calibrated on {cal.get('prompts')} prompts x {cal.get('steps')} steps "
        f"at {cal.get('size')} px ({cal.get('feeds')} feeds, timesteps "
        f"{steps[0] if steps else '-'}..{steps[-1] if steps else '-'})",
        f"               kept fp32: {kept.get('op_types')}; nodes "
        f"{', '.join(kept.get('nodes', [])) or 'none'}",
    ]
    if verification:
        lines.append(
            f"               checked against the fp32 U-Net on "
            f"{len(verification.cases)} held-out feeds: max rel error "
            f"{verification.max_rel_error:.3g} (threshold {verification.threshold_rel:g})"
        )
    return lines


def _component_rows(folder: Path, manifest) -> list[tuple[str, ...]]:
    header = ("component", "files", "size", "precision", "nodes")
    rows = [(*header, "max abs err", "max rel err", "build check")]
    for comp in manifest.components.values():
        files = [comp.file] + ([comp.external_data] if comp.external_data else [])
        size = sum((folder / f).stat().st_size for f in files if (folder / f).is_file())
        missing = [f for f in files if not (folder / f).is_file()]
        check = comp.verification
        rows.append(
            (
                comp.name,
                " + ".join(files) + (" (MISSING)" if missing else ""),
                _size(size),
                comp.precision,
                " -> ".join(str(v) for v in comp.node_counts.values()) or "-",
                f"{check.max_abs_error:.3g}" if check else "-",
                f"{check.max_rel_error:.3g}" if check else "-",
                ("passed" if check.passed else "FAILED")
                if check
                else ("adopted, not verified" if manifest.adoption else "not verified"),
            )
        )
    return rows


def _file_lines(checks, verified: bool) -> list[str]:
    if not verified:
        lines = ["file check     not done: sha256 not compared (--verify hashes every file)"]
        for c in checks:
            if c.size is None:
                lines.append(f"warning        {c.path} is MISSING")
            elif c.verified_size is not None and c.size != c.verified_size:
                lines.append(
                    f"warning        {c.path} is {c.size} bytes; it had {c.verified_size} when "
                    "it last matched its sha256"
                )
        return lines
    bad = sum(not c.ok for c in checks)
    summary = (
        f"all {len(checks)} files match their sha256"
        if not bad
        else f"{bad} of {len(checks)} files do NOT match their sha256"
    )
    rows = [("file", "size", "sha256 (recorded)", "sha256 (now)", "file check")]
    for c in checks:
        rows.append(
            (
                c.path,
                _size(c.size) if c.size is not None else "-",
                c.expected_sha256[:16] or "-",
                (c.sha256 or "-")[:16],
                c.status,
            )
        )
    return [f"file check     {summary}", "", *_table(rows)]


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, row in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
