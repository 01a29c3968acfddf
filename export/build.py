"""``sdrt build``: a diffusers Stable Diffusion pipeline -> a verified ONNX model folder.

The folder follows Optimum's ONNX layout (so Optimum's ORT pipelines load it as it is)
and carries ``sdrt.json``. The build writes into a hidden folder beside the output and
renames it into place only when every component is exported, verified and the manifest
written, so an interrupted build never leaves a folder that looks complete. With
``force``, components whose source hash (weights + config + export options + library
versions) matches the previous build's are copied from it instead of exported again.

One build per output at a time: the build holds an OS lock beside the output
(``output_lock``) and fails at once if another build holds it. Holding it, it first removes
the partial folders that killed builds of the same output left (``staging``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.export.build_config import BuildConfig
from sdrt.export.components import (
    ShapeCase,
    component_names,
    load_export_wrapper,
    unet_upsampling_factor,
)
from sdrt.export.output_lock import lock_output
from sdrt.export.scheduler_corrections import corrected_source, write_corrected_configs
from sdrt.export.single_file import open_source
from sdrt.export.source import (
    COPIED_FOLDERS,
    MODEL_FOLDERS,
    FolderHasher,
    SourceModel,
)
from sdrt.export.staging import StaleBuild, commit, create_staging, discard, remove_stale
from sdrt.export.tome_options import TomeOptions

from sdrt.errors import InputError, ModelFolderError
from sdrt.files import check_output_folder
from sdrt.integrity import record_verified
from sdrt.manifest import (
    ADAPTER_UNET,
    CONTROLNET_UNET,
    MANIFEST_NAME,
    T2I_ADAPTER,
    BuildOptions,
    BuiltAdapter,
    Component,
    ConfigCorrection,
    DeepCacheBranch,
    DeepCacheBuild,
    Manifest,
    Source,
    TensorSpec,
    deep_cache_feature_output,
    read_manifest,
    sha256_file,
    shallow_unet_name,
    write_manifest,
)
from sdrt.recipes import resolve_recipe

# Bump when the exporter's output changes for the same inputs: invalidates reuse.
EXPORTER_VERSION = 1
TRACE_SEED = 0
COMPONENT_CONFIG = "config.json"
ADAPTERS_SCRATCH = ".adapters"  # inside the staging folder: the source with adapters applied

ProgressCallback = Callable[[str, str], None]  # (component, what is happening)


@dataclass(frozen=True)
class ComponentResult:
    name: str
    action: str  # "exported" or "reused"
    seconds: float
    component: Component


@dataclass(frozen=True)
class BuildResult:
    output: Path
    manifest: Manifest
    components: tuple[ComponentResult, ...]
    seconds: float
    size_bytes: int
    # partial folders that stopped builds of this output had left, removed before building
    stale_removed: tuple[StaleBuild, ...] = ()


@dataclass(frozen=True)
class HeldOutput:
    """What ``hold_output`` yields: this process holds ``output``'s build lock (``locked``),
    or no lock can be had on this platform (``locked`` False)."""

    output: Path
    locked: bool


@contextmanager
def hold_output(output: str | os.PathLike) -> Iterator[HeldOutput]:
    """Hold ``output``'s build lock for the ``with`` block, making its parent folders first
    (like ``mkdir -p``: ``-o out/sd15`` just works); ``OutputBusyError`` at once if another
    process holds it. For a build and the steps after it (``sdrt build --target``)."""
    output = Path(output)
    _make_parent(output)
    with lock_output(output) as locked:
        yield HeldOutput(output, locked)


def build(config: BuildConfig, progress: ProgressCallback | None = None) -> BuildResult:
    """Build ``config.output`` holding its lock throughout (``OutputBusyError`` at once if
    another build of it is running)."""
    with hold_output(config.output) as held:
        return build_held(config, held, progress)


def build_held(
    config: BuildConfig, held: HeldOutput, progress: ProgressCallback | None = None
) -> BuildResult:
    """``build`` inside ``hold_output(config.output)``: first remove what killed builds of
    the output left (only ever while its lock is held), then build it."""
    if held.output != config.output:
        raise InputError(
            f"build_held: expected the lock of output {str(config.output)!r}, "
            f"got the lock of {str(held.output)!r}"
        )
    started = time.perf_counter()
    report = progress or (lambda component, stage: None)
    output = config.output
    stale = tuple(remove_stale(output)) if held.locked else ()
    previous = _check_output(output, force=config.force)
    with open_source(config.source, config.revision, config.single_file, output) as source:
        staging = create_staging(output)
        try:
            adapters = ()
            if config.loras or config.embeddings:
                from sdrt.export.build_adapters import apply_adapters

                report("source", "applying adapters")
                scratch = staging.folder / ADAPTERS_SCRATCH
                source, adapters = apply_adapters(source, config.loras, config.embeddings, scratch)
            # After the adapters: their re-read source has the configs as written.
            source, corrections = corrected_source(source)
            tiny = None
            if config.tiny_vae is not None:
                from sdrt.export.tiny_vae import resolve_tiny_vae

                tiny = resolve_tiny_vae(config.tiny_vae, source)
            controlnets = ()
            if config.controlnets:  # checked against the U-Net before any export
                from sdrt.export.controlnet import resolve_controlnets

                controlnets = resolve_controlnets(config.controlnets, source)
            t2i_adapter = None
            if config.t2i_adapter is not None:  # checked against the U-Net, as ControlNets
                from sdrt.export.t2i_adapter import resolve_t2i_adapter

                t2i_adapter = resolve_t2i_adapter(config.t2i_adapter, source)
            manifest, results = _build_into(
                staging.folder,
                config,
                source,
                previous,
                report,
                corrections,
                adapters=adapters,
                tiny=tiny,
                controlnets=controlnets,
                t2i_adapter=t2i_adapter,
            )
            shutil.rmtree(staging.folder / ADAPTERS_SCRATCH, ignore_errors=True)
            commit(staging)
        except BaseException:
            discard(staging)
            raise
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return BuildResult(output, manifest, tuple(results), time.perf_counter() - started, size, stale)


def _build_into(
    folder: Path,
    config: BuildConfig,
    source: SourceModel,
    previous: Manifest | None,
    report: ProgressCallback,
    corrections: tuple[ConfigCorrection, ...] = (),
    adapters: tuple[BuiltAdapter, ...] = (),
    tiny=None,  # export/tiny_vae.py's TinyVaeSource, or None
    controlnets=(),  # export/controlnet.py's ControlNetSources
    t2i_adapter=None,  # export/t2i_adapter.py's T2IAdapterSource, or None
) -> tuple[Manifest, list[ComponentResult]]:
    from sdrt.export.adaptable import ADAPTABLE_FORMAT

    output = config.output
    report("source", "hashing")
    hasher = FolderHasher(source.folder)
    _copy_pipeline_files(source, folder)
    results = []
    precisions = _precisions(config, source)
    cases = _verification_cases(config, source)
    branches = config.deep_cache_branches
    if branches:  # before any export: a branch the U-Net does not have fails at once
        from sdrt.export.deep_cache import check_branches

        check_branches(len(source.configs["unet"]["down_block_types"]), branches)
    # Before any export: a recipe the source cannot run fails at once (sdrt/recipes.py).
    recipe = resolve_recipe(config.recipe, source.configs, source.model_index, source.path_or_id)
    for name in component_names(source, branches):
        t0 = time.perf_counter()
        export_options = {
            "component": name,
            "precision": precisions[name],
            "opset": config.opset,
            "family": source.family,
            "exporter": EXPORTER_VERSION,
            "token_embedding_input": name.startswith("text_encoder"),
            "lora_ready": ADAPTABLE_FORMAT if config.lora_ready else 0,
            # recorded only where it differs, so that older builds' components are reused
            **(
                {"lora_targets": "all"}
                if config.lora_ready and config.lora_targets == "all"
                else {}
            ),
            **({"deep_cache": list(branches)} if name == "unet" and branches else {}),
            **({"tome": config.tome.as_record()} if config.tome and name == "unet" else {}),
            **_library_versions(exporting=True),
        }
        source_sha256 = hasher.folders((wrapper_folder(name),), export_options)
        reused = _reuse(previous, output, folder, name, source_sha256)
        if reused is not None:
            report(name, "reused")
            results.append(ComponentResult(name, "reused", time.perf_counter() - t0, reused))
            continue
        component = _export_component(
            source,
            name,
            folder,
            precision="fp32" if precisions[name] == "int8" else precisions[name],
            opset=config.opset,
            cases=cases,
            source_sha256=source_sha256,
            report=report,
            lora_ready=config.lora_ready,
            lora_targets=config.lora_targets,
            deep_cache_branches=branches,
            tome=config.tome if name == "unet" else None,
        )
        results.append(ComponentResult(name, "exported", time.perf_counter() - t0, component))
    tiny_record = None
    if tiny is not None:
        tiny_record, tiny_results = _build_tiny_vae(
            tiny, folder, config, source, previous, cases, precisions, report
        )
        results.extend(tiny_results)
    controlnet_records = ()
    if controlnets:
        controlnet_records, controlnet_results = _build_controlnets(
            controlnets, folder, config, source, previous, cases, precisions, report, hasher
        )
        results.extend(controlnet_results)
    adapter_record = None
    if t2i_adapter is not None:
        adapter_record, adapter_results = _build_t2i_adapter(
            t2i_adapter, folder, config, source, previous, cases, precisions, report, hasher
        )
        results.extend(adapter_results)
    write_corrected_configs(folder, source, corrections)
    manifest = _manifest(config, source, hasher, results, cases, precisions)
    manifest = dataclasses.replace(
        manifest,
        config_corrections=corrections,
        adapters=adapters,
        deep_cache=_deep_cache_record(branches),
        tiny_vae=tiny_record,
        tome=config.tome.as_record() if config.tome else None,
        recipe=recipe,
        controlnets=controlnet_records,
        t2i_adapter=adapter_record,
    )
    report("manifest", "writing")
    write_manifest(folder, manifest)
    if precisions.get("unet") == "int8" and not _has_int8_unet(manifest, config.int8_method):
        manifest, results = _quantize_unet(folder, config, manifest, results, report)
    record_verified(folder, manifest)  # just hashed: the first load need not hash again
    return manifest, results


def _build_tiny_vae(tiny, folder, config, source, previous, cases, precisions, report):
    """Export (or reuse) the tiny VAE's graphs, in the VAE's precision and at its
    verification shapes; (its manifest record, their ComponentResults)."""
    from sdrt.export.tiny_vae import COMPONENTS, CONFIG_FILE, load_tiny_wrapper

    hasher = FolderHasher(tiny.folder)
    precision = precisions["vae_decoder"]
    results = []
    for name in COMPONENTS:
        t0 = time.perf_counter()
        export_options = {
            "component": name,
            "precision": precision,
            "opset": config.opset,
            "exporter": EXPORTER_VERSION,
            **_library_versions(exporting=True),
        }
        source_sha256 = tiny.content_sha256(hasher, export_options)
        reused = _reuse(previous, config.output, folder, name, source_sha256)
        if reused is not None:
            report(name, "reused")
            results.append(ComponentResult(name, "reused", time.perf_counter() - t0, reused))
            continue
        component = _export_component(
            source,
            name,
            folder,
            precision=precision,
            opset=config.opset,
            cases=cases,
            source_sha256=source_sha256,
            report=report,
            wrapper_loader=lambda n=name: load_tiny_wrapper(tiny, n, source.vae_scale_factor),
            config_file=tiny.folder / CONFIG_FILE,
        )
        results.append(ComponentResult(name, "exported", time.perf_counter() - t0, component))
    return tiny.record(hasher), results


def _build_controlnets(
    controlnets, folder, config, source, previous, cases, precisions, report, hasher
):
    """Export (or reuse) the U-Net that takes ControlNet residuals and each ControlNet, in
    the U-Net's precision and at its verification shapes; (their records, ComponentResults)."""
    from sdrt.export.controlnet import load_controlnet_wrapper, load_residual_unet

    precision = precisions["unet"]
    common = {"precision": precision, "opset": config.opset, "exporter": EXPORTER_VERSION}
    common |= {"family": source.family, **_library_versions(exporting=True)}
    lora = {}
    if config.lora_ready:  # the residual U-Net's branches, as the U-Net's (export_options)
        from sdrt.export.adaptable import ADAPTABLE_FORMAT

        lora = {"lora_ready": ADAPTABLE_FORMAT, "lora_targets": config.lora_targets}
    exports = [  # (component, source hash, wrapper loader, config file)
        (
            CONTROLNET_UNET,
            hasher.folders(("unet",), {"component": CONTROLNET_UNET, **common, **lora}),
            lambda: load_residual_unet(source),
            None,
        )
    ]
    records = []
    for controlnet in controlnets:
        own = FolderHasher(controlnet.folder)
        options = {"component": controlnet.component, **common}
        exports.append(
            (
                controlnet.component,
                controlnet.content_sha256(own, options),
                lambda c=controlnet: load_controlnet_wrapper(c, source),
                controlnet.folder / COMPONENT_CONFIG,
            )
        )
        records.append(controlnet.record(own))
    results = _export_or_reuse(exports, folder, config, source, previous, cases, precision, report)
    return tuple(records), results


def _build_t2i_adapter(
    adapter, folder, config, source, previous, cases, precisions, report, hasher
):
    """Export (or reuse) the T2I-Adapter and the U-Net that takes its features, in the
    U-Net's precision and at its verification shapes; (the record, ComponentResults)."""
    from sdrt.export.t2i_adapter import load_adapter_unet, load_adapter_wrapper

    precision = precisions["unet"]
    common = {"precision": precision, "opset": config.opset, "exporter": EXPORTER_VERSION}
    common |= {"family": source.family, **_library_versions(exporting=True)}
    own = FolderHasher(adapter.folder)
    adapter_sha256 = adapter.content_sha256(own, {"component": T2I_ADAPTER, **common})
    # the feature inputs' count and shapes come from the adapter: its hash keys the U-Net too
    unet_options = {"component": ADAPTER_UNET, "adapter": adapter_sha256, **common}
    exports = [  # (component, source hash, wrapper loader, config file)
        (
            ADAPTER_UNET,
            hasher.folders(("unet",), unet_options),
            lambda: load_adapter_unet(adapter, source),
            source.folder / "unet" / COMPONENT_CONFIG,
        ),
        (
            T2I_ADAPTER,
            adapter_sha256,
            lambda: load_adapter_wrapper(adapter),
            adapter.folder / COMPONENT_CONFIG,
        ),
    ]
    results = _export_or_reuse(exports, folder, config, source, previous, cases, precision, report)
    return adapter.record(own), results


def _export_or_reuse(exports, folder, config, source, previous, cases, precision, report):
    """Each (component, source hash, wrapper loader, config file) reused from the previous
    build where its hash matches, else exported and verified; their ComponentResults."""
    results = []
    for name, source_sha256, loader, config_file in exports:
        t0 = time.perf_counter()
        reused = _reuse(previous, config.output, folder, name, source_sha256)
        if reused is not None:
            report(name, "reused")
            results.append(ComponentResult(name, "reused", time.perf_counter() - t0, reused))
            continue
        component = _export_component(
            source,
            name,
            folder,
            precision=precision,
            opset=config.opset,
            cases=cases,
            source_sha256=source_sha256,
            report=report,
            wrapper_loader=loader,
            config_file=config_file,
            # run-time LoRA feeds the residual U-Net the U-Net's branches; not the ControlNets
            lora_ready=config.lora_ready and name == CONTROLNET_UNET,
            lora_targets=config.lora_targets,
            lora_as="unet",
        )
        results.append(ComponentResult(name, "exported", time.perf_counter() - t0, component))
    return results


def _has_int8_unet(manifest: Manifest, method: str) -> bool:
    unet = manifest.components["unet"]
    if method == "nncf":
        return unet.openvino is not None and unet.precision == "fp32"
    return unet.precision == "int8"


def _quantize_unet(
    folder: Path,
    config: BuildConfig,
    manifest: Manifest,
    results: list[ComponentResult],
    report: ProgressCallback,
) -> tuple[Manifest, list[ComponentResult]]:
    """The finished fp32 folder's U-Net quantized to int8, calibrated on the folder's own
    pipeline: its ONNX graph replaced by a QDQ one (engines/int8_unet.py), or, with method
    nncf, an OpenVINO IR written beside it (engines/int8_unet_nncf.py)."""
    from sdrt.engines.int8_unet import Int8Options, build_int8_unet
    from sdrt.engines.int8_unet_nncf import build_nncf_unet

    t0 = time.perf_counter()
    by = "NNCF, for openvino" if config.int8_method == "nncf" else "ONNX Runtime"
    report("unet", f"quantizing to int8 with {by} (calibrating on the pipeline's own feeds)")
    options = Int8Options(size=manifest.build.min_size)  # the cheapest size served
    if config.calibration_prompts:
        options = dataclasses.replace(options, prompts=config.calibration_prompts)
    quantize = build_nncf_unet if config.int8_method == "nncf" else build_int8_unet
    unet = quantize(folder, manifest.components["unet"], options)
    components = {**manifest.components, "unet": unet}
    manifest = dataclasses.replace(manifest, components=components)
    write_manifest(folder, manifest)
    seconds = time.perf_counter() - t0
    results = [
        dataclasses.replace(r, component=unet, seconds=r.seconds + seconds)
        if r.name == "unet"
        else r
        for r in results
    ]
    return manifest, results


# ---------------------------------------------------------------------------- output folder


def _make_parent(output: Path) -> None:
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"the parent of output {str(output)!r} is a file, not a folder") from None


def _check_output(output: Path, *, force: bool) -> Manifest | None:
    """Refuse to replace what should not be replaced; return the previous manifest to reuse."""
    if not check_output_folder(
        output, force=force, marker=MANIFEST_NAME, kind="an sdrt model folder"
    ):
        return None
    try:
        return read_manifest(output)
    except ModelFolderError:
        return None  # unreadable: rebuild everything


def _copy_pipeline_files(source: SourceModel, staging: Path) -> None:
    """Tokenizers, scheduler and feature extractor as they are; model_index.json with the
    entries of modules we do not carry (safety checker, image encoder) set to null."""
    copied = [name for name in COPIED_FOLDERS if (source.folder / name).is_dir()]
    for name in copied:
        shutil.copytree(source.folder / name, staging / name)
    carried = set(copied) | set(MODEL_FOLDERS)
    index = {
        key: (
            [None, None]
            if isinstance(value, list) and len(value) == 2 and key not in carried
            else value
        )
        for key, value in source.model_index.items()
    }
    (staging / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # the old folder is removed after the swap: sharing is safe
    except OSError:
        shutil.copy2(src, dst)


def _reuse(
    previous: Manifest | None, output: Path, staging: Path, name: str, source_sha256: str
) -> Component | None:
    """The previous build's component if its source hash matches and its files are intact."""
    if previous is None or name not in previous.components:
        return None
    old = previous.components[name]
    if old.source_sha256 != source_sha256 or not (old.verification and old.verification.passed):
        return None
    files = {old.file: old.sha256}
    if old.external_data:
        files[old.external_data] = old.external_data_sha256
    config_file = Path(old.file).parent / COMPONENT_CONFIG
    for rel, digest in files.items():
        path = output / rel
        if not path.is_file() or sha256_file(path) != digest:
            return None
    if not (output / config_file).is_file():
        return None
    for rel in [*files, config_file]:
        _link_or_copy(output / rel, staging / rel)
    return old


# ---------------------------------------------------------------------------- export


def _precisions(config: BuildConfig, source: SourceModel) -> dict[str, str]:
    if config.precision == "int8":  # the U-Net alone: int8 text encoders/VAEs lose the most
        # (DeepCache's shallow U-Nets are a few percent of it: they stay fp32)
        vae = config.vae_precision or "fp32"
        return {
            name: "int8" if name == "unet" else (vae if name.startswith("vae") else "fp32")
            for name in component_names(source, config.deep_cache_branches)
        }
    vae = config.vae_precision
    if vae is None:
        # Only SDXL pipelines honour force_upcast (diffusers' AutoencoderKL defaults it to
        # true, so SD 1.x/2.x configs carry it too without meaning it).
        upcast = source.family == "sdxl" and source.configs["vae"].get("force_upcast", True)
        vae = "fp32" if upcast else config.precision
    return {
        name: vae if name.startswith("vae") else config.precision
        for name in component_names(source, config.deep_cache_branches)
    }


@dataclass(frozen=True)
class _Cases:
    trace: ShapeCase
    unet: tuple[ShapeCase, ShapeCase]  # also the text encoders' (prompts + negatives)
    vae: tuple[ShapeCase, ShapeCase]
    sizes_verified_beyond_factor: bool  # a case's latent size is not a multiple of 2**up


def _verification_cases(config: BuildConfig, source: SourceModel) -> _Cases:
    """Two shapes per component, inside the build's range, differing in batch and size.

    The U-Net is traced at a latent size that is not a multiple of its up-sampling factor,
    so diffusers forwards explicit up-sampling sizes and the graph takes them from the skip
    connections: it then serves every multiple of the VAE factor. The second case checks
    such a size when the range holds one.
    """
    vsf = source.vae_scale_factor
    factor = unet_upsampling_factor(source) * vsf  # pixels per U-Net bottleneck cell
    for size in (config.min_size, config.max_size):
        if size % vsf:
            raise InputError(
                f"sizes must be multiples of this model's VAE factor {vsf}, got {size}"
            )
    trace = ShapeCase(batch=2, height=factor + vsf, width=factor, steps=1)
    first = config.min_size
    candidates = range(first + vsf, config.max_size + 1, vsf)
    second = next((s for s in candidates if s % factor), None)
    if second is None:
        second = config.max_size
    guided_batch = min(3, 2 * config.max_batch)
    unet = (
        ShapeCase(batch=2, height=first, width=first, steps=1),  # one timestep, batch 2
        ShapeCase(batch=guided_batch, height=second, width=first, steps=guided_batch),
    )
    vae = (
        ShapeCase(batch=min(2, config.max_batch), height=first, width=first),
        ShapeCase(batch=1, height=second, width=first),
    )
    beyond = any(s % factor for s in (first, second))
    return _Cases(trace, unet, vae, beyond)


def _export_component(
    source: SourceModel,
    name: str,
    staging: Path,
    *,
    precision: str,
    opset: int,
    cases: _Cases,
    source_sha256: str,
    report: ProgressCallback,
    lora_ready: bool = False,
    lora_targets: str = "attention",
    deep_cache_branches: tuple[int, ...] = (),
    wrapper_loader: Callable[[], Any] | None = None,  # default: load_export_wrapper(source, name)
    config_file: Path | None = None,  # default: the source folder's config of the component
    tome: TomeOptions | None = None,
    # the component whose LoRA branches this graph gets, by the same input names (the
    # ControlNet residual U-Net takes the U-Net's run-time LoRA feeds); default: ``name``
    lora_as: str | None = None,
) -> Component:
    import torch
    from sdrt.engines.fp16_graph import convert_to_fp16
    from sdrt.engines.onnx_files import EXTERNAL_DATA_FILE, ONNX_FILE, SavedModel, save_graph
    from sdrt.export.adaptable import adapt_wrapper, expose_branches
    from sdrt.export.onnx import cleanup_graph, export_graph
    from sdrt.export.verify import (
        THRESHOLDS,
        check_passed,
        compare_with_onnxruntime,
        torch_reference,
    )

    report(name, "loading weights")
    if wrapper_loader is not None:
        wrapper = wrapper_loader()
    else:
        wrapper = load_export_wrapper(source, name, deep_cache_branches)
    report(name, "running eager PyTorch")
    shapes = cases.vae if name.startswith("vae") else cases.unet
    if tome is not None:  # the reference is tomesd itself; the graph its exportable twin
        import tomesd

        tomesd.apply_patch(wrapper.unet, use_rand=False, **tome.tomesd_arguments())
    references = [
        torch_reference(
            wrapper,
            wrapper.sample_inputs(case, torch.Generator().manual_seed(1 + i)),
            wrapper.output_names,
        )
        for i, case in enumerate(shapes)
    ]
    if tome is not None:
        from sdrt.export.tome import apply_tome

        tomesd.remove_patch(wrapper.unet)
        apply_tome(wrapper.unet, tome)
    adaptable_targets, kernels = (
        adapt_wrapper(wrapper, lora_as or name, lora_targets) if lora_ready else ({}, {})
    )
    report(name, "exporting")
    scratch = staging / ".scratch" / name
    export_graph(wrapper, cases.trace, scratch / ONNX_FILE, opset=opset, seed=TRACE_SEED)
    del wrapper
    gc.collect()
    report(name, "cleaning up")
    cleaned = cleanup_graph(scratch / ONNX_FILE)
    shutil.rmtree(staging / ".scratch")
    model = cleaned.model
    counts = {"exported": cleaned.exported_nodes, "cleaned": cleaned.cleaned_nodes}
    del cleaned
    if precision == "fp16":
        report(name, "converting to fp16")
        model = convert_to_fp16(model)
        counts["fp16"] = len(model.graph.node)
    promoted = None
    if name.startswith("text_encoder"):  # textual inversion feeds it a larger table
        from sdrt.export.token_embedding_input import promote_token_embedding

        config = source.configs[name]
        promoted = promote_token_embedding(
            model, config["vocab_size"], config["hidden_size"], EXTERNAL_DATA_FILE
        )
    lora_branches = tuple(expose_branches(model, adaptable_targets, kernels))
    report(name, "saving")
    saved = save_graph(model, staging / name)
    del model
    gc.collect()
    config_file = config_file or source.folder / wrapper_folder(name) / COMPONENT_CONFIG
    shutil.copy2(config_file, staging / name / COMPONENT_CONFIG)
    report(name, "verifying")
    verification = compare_with_onnxruntime(saved.onnx_file, references, THRESHOLDS[precision])
    inputs, outputs = _tensor_specs(saved.onnx_file)
    token_embedding = None
    if promoted is not None:
        from sdrt.export.token_embedding_input import token_embedding_record

        token_embedding = token_embedding_record(saved.onnx_file, name)
        saved = SavedModel(saved.onnx_file, staging / token_embedding.file)
    component = Component(
        name=name,
        file=f"{name}/{ONNX_FILE}",
        sha256=sha256_file(saved.onnx_file),
        precision=precision,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        external_data=(
            f"{name}/{saved.external_data_file.name}" if saved.external_data_file else None
        ),
        external_data_sha256=(
            sha256_file(saved.external_data_file) if saved.external_data_file else None
        ),
        source_sha256=source_sha256,
        node_counts=counts,
        verification=verification,
        token_embedding=token_embedding,
        lora_branches=lora_branches,
    )
    check_passed(name, precision, verification)
    return component


def wrapper_folder(name: str) -> str:
    """The source pipeline's folder a component's weights and config.json come from."""
    if name.startswith("unet"):  # DeepCache's shallow U-Nets take the U-Net's weights
        return "unet"
    return "vae" if name.startswith("vae") else name


def _deep_cache_record(branches: tuple[int, ...]) -> DeepCacheBuild | None:
    if not branches:
        return None
    return DeepCacheBuild(
        tuple(
            DeepCacheBranch(b, deep_cache_feature_output(b), shallow_unet_name(b)) for b in branches
        )
    )


_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}


def _tensor_specs(onnx_file: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in tensor.shape.dim)
        return TensorSpec(value.name, _ONNX_DTYPES[tensor.elem_type], dims)

    initializers = {t.name for t in graph.initializer}
    inputs = tuple(spec(v) for v in graph.input if v.name not in initializers)
    return inputs, tuple(spec(v) for v in graph.output)


# ---------------------------------------------------------------------------- manifest


def _library_versions(*, exporting: bool = False) -> dict[str, str]:
    """Versions that shape the exported graphs (exporting) or that the manifest records."""
    from importlib import metadata

    names = ["torch", "diffusers", "transformers", "onnx", "onnxruntime"]
    if not exporting:
        names = ["sdrt", *names, "onnx-graphsurgeon", "polygraphy"]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _family_options(source: SourceModel) -> dict[str, Any]:
    """What the runtime needs beyond the I/O specs: which outputs feed the U-Net, and SDXL's
    conditioning settings."""
    index, unet, vae = source.model_index, source.configs["unet"], source.configs["vae"]
    options: dict[str, Any] = {
        "vae_force_upcast": source.family == "sdxl" and bool(vae.get("force_upcast", True)),
        "vae_encoder_outputs": {
            "latent_sample": "mode (mean) of the latent distribution",
            "latent_parameters": "mean and log-variance, concatenated on channels",
        },
    }
    if source.family != "sdxl":
        options["prompt_embeds_outputs"] = {"text_encoder": "last_hidden_state"}
        options["requires_safety_checker"] = bool(index.get("requires_safety_checker", False))
        return options
    penultimate = {
        name: f"hidden_states.{source.configs[name]['num_hidden_layers'] - 1}"
        for name in source.text_encoders
    }
    options |= {
        "prompt_embeds_outputs": penultimate,  # concatenated on the last axis
        "pooled_prompt_embeds_output": {"text_encoder_2": "text_embeds"},
        "force_zeros_for_empty_prompt": bool(index.get("force_zeros_for_empty_prompt", True)),
        "requires_aesthetics_score": bool(index.get("requires_aesthetics_score", False)),
        "addition_time_embed_dim": unet.get("addition_time_embed_dim"),
        "projection_class_embeddings_input_dim": unet.get("projection_class_embeddings_input_dim"),
    }
    return options


def _manifest(
    config: BuildConfig,
    source: SourceModel,
    hasher: FolderHasher,
    results: list[ComponentResult],
    cases: _Cases,
    precisions: Mapping[str, str],
) -> Manifest:
    unet, vae = source.configs["unet"], source.configs["vae"]
    vsf = source.vae_scale_factor
    native = unet["sample_size"] * vsf
    opt = config.opt_size or min(max(native, config.min_size), config.max_size)
    # Sizes the graphs were verified for: any multiple of the VAE factor when a verified
    # shape was off the U-Net's up-sampling grid, else only that grid.
    size_multiple = (
        vsf if cases.sizes_verified_beyond_factor else unet_upsampling_factor(source) * vsf
    )
    hashed = [n for n in MODEL_FOLDERS + COPIED_FOLDERS if (source.folder / n).exists()]
    return Manifest(
        source=Source(
            path_or_id=source.path_or_id,
            revision=source.revision,
            content_sha256=(
                source.single_file["sha256"]  # the file, not the folder converted from it
                if source.single_file
                else hasher.folders((*hashed, "model_index.json"))
            ),
            single_file=source.single_file,
        ),
        family=source.family,
        prediction_type=source.prediction_type,
        vae_scaling_factor=float(vae.get("scaling_factor", 0.18215)),
        vae_shift_factor=vae.get("shift_factor"),
        latent_channels=int(vae.get("latent_channels", 4)),
        unet_in_channels=int(unet.get("in_channels", 4)),
        sample_size=int(unet["sample_size"]),
        vae_scale_factor=vsf,
        build=BuildOptions(
            min_size=config.min_size,
            max_size=config.max_size,
            opt_size=opt,
            min_batch=1,
            max_batch=config.max_batch,
            opt_batch=1,
            precision=config.precision,
            vae_precision=precisions["vae_decoder"],
            opset=config.opset,
            size_multiple=size_multiple,
        ),
        components={r.name: r.component for r in results},
        tokenizers=source.tokenizers,
        versions=_library_versions(),
        family_options=_family_options(source),
    )
