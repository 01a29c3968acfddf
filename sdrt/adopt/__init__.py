"""``sdrt adopt``: an ONNX Stable Diffusion folder exported elsewhere (Hugging Face Optimum,
the Hub's ONNX revisions) -> an sdrt model folder, with no torch.

The graphs are loaded in ONNX Runtime and their I/O read (folder.py, graphs.py), the
settings taken from the configs Optimum copies or derived from the graphs (describe.py),
the files hashed as a build hashes them, and then each component is run once as a
generation runs it (probe.py). The manifest records that the folder was adopted and what
was checked: nothing is compared with PyTorch, since there are no weights to compare with.

Where it is written: into a new folder ``output`` of hard links to the source's files
(copies across file systems), built beside it and renamed into place, so the user's folder
is untouched; or, with ``in_place``, as sdrt.json (and its hash record) added to the source
folder, whose own files are never changed. Nothing is written unless every check passed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sdrt.adopt.describe import AdoptOptions, Settings, describe
from sdrt.adopt.folder import SDRT_FILES, OnnxFolder, inspect_onnx_folder, is_onnx_folder
from sdrt.adopt.graphs import GraphInfo, read_graph
from sdrt.adopt.probe import run_forward_checks
from sdrt.adopt.tree import folder_content_sha256, link_tree, replace_folder, staging_beside
from sdrt.errors import InputError
from sdrt.files import check_output_folder
from sdrt.integrity import record_verified
from sdrt.manifest import (
    MANIFEST_NAME,
    Adoption,
    BuildOptions,
    Component,
    Manifest,
    Source,
    sha256_file,
    write_manifest,
)
from sdrt.recipes import resolve_recipe

__all__ = ["AdoptOptions", "AdoptResult", "adopt", "is_onnx_folder"]

ProgressCallback = Callable[[str], None]
CHECKED = (
    "each graph loads in ONNX Runtime {ort} (CPU)",
    "inputs and outputs are those the runtime feeds and reads (names, dtypes, fixed dimensions)",
    "one forward pass per component at {size}x{size} px, batch 1 (the U-Net at 2 with "
    "classifier-free guidance, at 1 with an LCM U-Net's guidance embedding), fed by the "
    "runtime's own steps: outputs finite and of the expected shapes",
    "files hashed (sha256) into this manifest",
    "not verified against PyTorch: the folder has no weights to compare with",
)


@dataclass(frozen=True)
class AdoptResult:
    folder: Path  # where sdrt.json was written
    manifest: Manifest
    seconds: float
    linked: bool  # output's files are hard links to the source's (False: copies, or in place)


def adopt(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    in_place: bool = False,
    options: AdoptOptions | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> AdoptResult:
    """Write sdrt.json for the ONNX folder ``source``: into ``output`` (a linked copy) or,
    with ``in_place``, into ``source``. ModelFolderError / InputError name what is wrong."""
    started = time.perf_counter()
    report = progress or (lambda stage: None)
    options = options or AdoptOptions()
    source = Path(source)
    target = _target(source, output, in_place=in_place, force=force)
    onnx = inspect_onnx_folder(source)
    graphs = {}
    for name, files in onnx.graphs.items():
        report(f"loading {name}")
        graphs[name] = read_graph(source, files)
    settings = describe(onnx, graphs)
    report("hashing")
    manifest = _manifest(onnx, graphs, settings, options)
    if in_place:
        with tempfile.TemporaryDirectory(prefix="sdrt-adopt-") as view:
            link_tree(source, Path(view), exclude=SDRT_FILES, symbolic=True)
            manifest = _checked(Path(view), manifest, report)
        try:
            write_manifest(source, manifest)
        except OSError as e:
            raise InputError(
                f"cannot write {MANIFEST_NAME} into {source} ({e}); adopt it with -o OUT"
            ) from None
        record_verified(source, manifest)
        return AdoptResult(source, manifest, time.perf_counter() - started, linked=False)
    staging = staging_beside(target)
    try:
        linked = link_tree(source, staging, exclude=SDRT_FILES)
        manifest = _checked(staging, manifest, report)
        record_verified(staging, manifest)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return AdoptResult(target, manifest, time.perf_counter() - started, linked)


def _target(source: Path, output, *, in_place: bool, force: bool) -> Path:
    """Where sdrt.json will go; InputError before any work where that cannot be."""
    if in_place == (output is not None):
        raise InputError("adopt: expected an output folder or in_place (one of them), got " + (
            "both" if in_place else "neither"))  # fmt: skip
    if in_place:
        if (source / MANIFEST_NAME).exists() and not force:
            raise InputError(f"{source} already has {MANIFEST_NAME}; pass --force to replace it")
        return source
    output = Path(output)
    if output.exists() and output.resolve() == source.resolve():
        raise InputError(f"output {str(output)!r} is the source folder; use --in-place for that")
    check_output_folder(output, force=force, marker=MANIFEST_NAME, kind="an sdrt model folder")
    return output


def _checked(folder: Path, manifest: Manifest, report: ProgressCallback) -> Manifest:
    """Run the forward checks on ``folder`` and return the manifest that records them."""
    write_manifest(folder, manifest)
    report("running each component once")
    probe = run_forward_checks(folder, manifest)
    import onnxruntime

    adoption = dataclasses.replace(
        manifest.adoption,
        checked=tuple(c.format(ort=onnxruntime.__version__, size=probe.size) for c in CHECKED),
        forward_checks=probe.checks,
        notes=manifest.adoption.notes + probe.notes,
    )
    manifest = dataclasses.replace(manifest, adoption=adoption)
    write_manifest(folder, manifest)
    return manifest


def _manifest(
    onnx: OnnxFolder, graphs: dict[str, GraphInfo], settings: Settings, options: AdoptOptions
) -> Manifest:
    folder = onnx.folder
    native = settings.sample_size * settings.vae_scale_factor
    producers = sorted({g.header.producer for g in graphs.values()})
    return Manifest(
        source=Source(
            path_or_id=str(folder.resolve()),
            revision=None,
            content_sha256=folder_content_sha256(folder, exclude=SDRT_FILES),
        ),
        family=settings.family,
        prediction_type=settings.prediction_type,
        vae_scaling_factor=settings.vae_scaling_factor,
        vae_shift_factor=settings.vae_shift_factor,
        latent_channels=settings.latent_channels,
        unet_in_channels=settings.unet_in_channels,
        sample_size=settings.sample_size,
        vae_scale_factor=settings.vae_scale_factor,
        build=BuildOptions(
            min_size=options.min_size,
            max_size=options.max_size,
            opt_size=min(max(native, options.min_size), options.max_size),
            min_batch=1,
            max_batch=options.max_batch,
            opt_batch=1,
            precision=settings.precision,
            vae_precision=settings.vae_precision,
            opset=settings.opset,
            size_multiple=settings.size_multiple,
        ),
        components={name: _component(folder, graph) for name, graph in graphs.items()},
        tokenizers=onnx.tokenizers,
        versions=_versions(onnx, producers),
        family_options=dict(settings.family_options),
        # A distilled model's steps, guidance and scheduler, as a build records them.
        recipe=resolve_recipe(None, onnx.configs, onnx.model_index, str(folder)),
        adoption=Adoption(
            layout=settings.layout,
            exporter=", ".join(producers),
            checked=(),
            forward_checks=(),
            notes=settings.notes,
            derived=dict(settings.derived),
        ),
    )


def _component(folder: Path, graph: GraphInfo) -> Component:
    """A graph as sdrt.json describes it: its real I/O, hashes, precision, opset."""
    files = graph.files
    return Component(
        name=files.name,
        file=files.file,
        sha256=sha256_file(folder / files.file),
        precision=graph.header.weights_precision,
        opset=graph.header.opset,
        inputs=graph.inputs,
        outputs=graph.outputs,
        external_data=files.external_data,
        external_data_sha256=(
            sha256_file(folder / files.external_data) if files.external_data else None
        ),
    )


def _versions(onnx: OnnxFolder, producers: list[str]) -> dict[str, str]:
    versions = {"exporter": ", ".join(producers)}
    made_with = onnx.model_index.get("_diffusers_version")
    if isinstance(made_with, str):
        versions["source diffusers"] = made_with
    for name in ("sdrt", "onnxruntime"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions
