"""fp16 TensorRT engines for a model folder: plan, build, verify, record.

``build_engines(folder, options)`` turns each ONNX component of an sdrt model folder into a
TensorRT plan, in process (Polygraphy's loaders over the TensorRT Python API):

1. plan: for every component, the optimization profile (engines/profiles.py) and the cache
   key (sdrt/backends/engine_key.py) over graph, options, TensorRT version and GPU architecture;
2. decide: an engine recorded in sdrt.json under the same key, verified, with its plan on
   disk as it was built (sdrt.integrity), is reused; any other (no record, another key,
   failed verification, missing or changed plan) is built, and the stale plan it replaces
   is deleted, never loaded;
3. build: fp16 (TensorRT 10's FP16 flag; on TensorRT 11, which only builds strongly
   typed, from an fp16 copy of an fp32 graph), a timing cache kept beside the engines
   (reused across builds), refit if asked (a ``--lora-ready`` graph is built with its LoRA
   branches folded away: run-time LoRA refits the base weights); written to
   ``engines/tensorrt/<key>/<component>.plan`` through a temporary file;
4. verify: the engine against ONNX Runtime fp32 on the CPU (engines/compare.py);
5. record: an ``Engine`` entry per plan, with the plan's sha256 and size (loads check the
   plan against them), written to sdrt.json atomically after each one; a failed verification
   is recorded too (loaders refuse it) and fails the build.

The VAE decoder also gets an fp32 engine when its graph is fp32, for the runtime's NaN
fallback (fp16 VAEs can overflow). Building and verifying are injected (``builder``,
``verifier``), so the decisions above are tested without a GPU; the real ones import
TensorRT, Polygraphy and cupy only when they run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sdrt.engines.compare import FP16, FP32, Thresholds, failure_message, verification_cases
from sdrt.engines.fp16_graph import write_fp16_copy
from sdrt.engines.profiles import ShapeRange, component_profile

from sdrt.adapters.lora_fold import FOLD_FORMAT, write_folded_copy
from sdrt.backends.engine_key import BuildEnvironment, engine_cache_key
from sdrt.backends.machine import probe_machine
from sdrt.backends.tensorrt import NAME as TARGET
from sdrt.backends.tensorrt import build_environment, find_record
from sdrt.errors import BackendUnavailableError, InputError, SdrtError, VerificationError
from sdrt.integrity import engine_plan_problem, open_model_folder, record_engine_plan
from sdrt.manifest import (
    Component,
    Engine,
    Manifest,
    Verification,
    sha256_file,
    write_manifest,
)

logger = logging.getLogger(__name__)

ENGINES_DIR = Path("engines") / TARGET
# Components whose fp16 output may overflow and which therefore get an fp32 engine as well.
FP32_FALLBACK_COMPONENTS = ("vae_decoder",)


@dataclass(frozen=True)
class TensorRTBuildOptions:
    shapes: ShapeRange
    components: tuple[str, ...] | None = None  # None: every component the folder has
    fp16: bool = True
    refit: bool = False
    optimization_level: int = 3  # TensorRT's builder optimization level, 0..5
    vae_fp32_fallback: bool = True
    timing_cache: Path | None = None  # None: engines/tensorrt/timing-<version>-sm<cc>.cache
    thresholds: Thresholds = FP16


@dataclass(frozen=True)
class EnginePlan:
    """One engine the folder should have, and whether the one on record can be reused."""

    component: str
    precision: str  # "fp16" or "fp32"
    profile: Mapping[str, Mapping[str, tuple[int, ...]]]
    options: Mapping[str, Any]  # everything that shapes the plan; hashed into the key
    cache_key: str
    path: str  # relative to the model folder
    action: str  # "reuse" or "build"
    reason: str
    replaces: Engine | None = None  # the record this build supersedes


@dataclass(frozen=True)
class BuildRequest:
    onnx_path: Path
    plan_path: Path  # where the builder writes the serialized engine
    profile: Mapping[str, Mapping[str, tuple[int, ...]]]
    fp16: bool
    refit: bool
    optimization_level: int
    timing_cache: Path
    graph_precision: str = "fp32"  # the ONNX graph's own precision (the manifest's)


class EngineBuilder(Protocol):
    def build(self, request: BuildRequest) -> None: ...


class EngineVerifier(Protocol):
    def verify(
        self,
        folder: Path,
        component: Component,
        plan_path: Path,
        profile: Mapping[str, Mapping[str, tuple[int, ...]]],
        thresholds: Thresholds,
    ) -> Verification: ...


@dataclass(frozen=True)
class BuildReport:
    manifest: Manifest
    plans: tuple[EnginePlan, ...]
    failed: tuple[str, ...] = field(default=())


# ---------------------------------------------------------------------------- plan and decide


def engine_options(
    precision: str, options: TensorRTBuildOptions, profile, component: Component | None = None
) -> dict[str, Any]:
    opts = {
        "precision": precision,
        "refit": options.refit,
        "optimization_level": options.optimization_level,
        "profile": {
            name: {k: list(v) for k, v in levels.items()} for name, levels in profile.items()
        },
    }
    if component is not None and component.lora_branches:
        opts["lora_branches_folded"] = FOLD_FORMAT  # built from the folded graph
    return opts


def decide(record: Engine | None, cache_key: str, folder: Path) -> tuple[str, str]:
    """("reuse" | "build", why). Only a verified record under this very key is reused."""
    if record is None:
        return "build", "no engine on record"
    if record.cache_key != cache_key:
        return (
            "build",
            f"the recorded engine has key {record.cache_key}, this build needs {cache_key}",
        )
    if record.verification is None or not record.verification.passed:
        return "build", "the recorded engine did not pass verification"
    if not (folder / record.path).is_file():
        return "build", f"the recorded plan {record.path} is missing"
    problem = engine_plan_problem(folder, record)
    if problem is not None:
        return "build", f"the recorded plan is not as it was built ({problem})"
    return "reuse", f"engine {cache_key} is up to date"


def plan_engines(
    folder: Path, manifest: Manifest, options: TensorRTBuildOptions, environment: BuildEnvironment
) -> tuple[EnginePlan, ...]:
    wanted = options.components or tuple(manifest.components)
    unknown = sorted(set(wanted) - set(manifest.components))
    if unknown:
        raise InputError(
            f"components {unknown} are not in this model folder; it has {sorted(manifest.components)}"
        )
    plans = []
    for name in wanted:
        component = manifest.components[name]
        profile = component_profile(component, options.shapes, manifest.vae_scale_factor)
        precisions = ["fp16" if options.fp16 else "fp32"]
        if (
            options.fp16
            and options.vae_fp32_fallback
            and name in FP32_FALLBACK_COMPONENTS
            and component.precision == "fp32"
        ):
            precisions.append("fp32")
        for precision in precisions:
            opts = engine_options(precision, options, profile, component)
            key = engine_cache_key(component, opts, environment)
            record = find_record(manifest, name, precision)
            action, reason = decide(record, key, folder)
            plans.append(
                EnginePlan(
                    component=name,
                    precision=precision,
                    profile=profile,
                    options=opts,
                    cache_key=key,
                    path=(ENGINES_DIR / key / f"{name}.plan").as_posix(),
                    action=action,
                    reason=reason,
                    replaces=record if action == "build" else None,
                )
            )
    return tuple(plans)


def default_timing_cache(folder: Path, environment: BuildEnvironment) -> Path:
    # Tactic timings hold for one TensorRT version on one GPU architecture.
    return (
        folder
        / ENGINES_DIR
        / f"timing-{environment.library_version}-sm{environment.compute_capability}.cache"
    )


# ---------------------------------------------------------------------------- build


def _remove_stale(folder: Path, record: Engine, keep: str) -> None:
    if record.path == keep:
        return
    stale = folder / record.path
    stale.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the key folder goes once it holds nothing else
        stale.parent.rmdir()


def _with_record(manifest: Manifest, engine: Engine, replaces: Engine | None) -> Manifest:
    kept = tuple(
        e
        for e in manifest.engines
        if e is not replaces
        and not (
            e.target == engine.target
            and e.component == engine.component
            and e.options.get("precision") == engine.options.get("precision")
        )
    )
    return manifest.with_engines((*kept, engine))


def build_engines(
    folder: str | os.PathLike,
    options: TensorRTBuildOptions,
    *,
    environment: BuildEnvironment | None = None,
    builder: EngineBuilder | None = None,
    verifier: EngineVerifier | None = None,
    progress: Callable[[str], None] = logger.info,
) -> BuildReport:
    """Build (or reuse) every engine ``options`` asks for; raises VerificationError on failure."""
    folder = Path(folder)
    manifest = open_model_folder(folder, "always")
    if environment is None or builder is None or verifier is None:
        environment = environment or detect_environment()
        builder = builder or TensorRTBuilder()
        verifier = verifier or TensorRTVerifier()
    plans = plan_engines(folder, manifest, options, environment)
    timing_cache = options.timing_cache or default_timing_cache(folder, environment)
    failed = []
    for plan in plans:
        label = f"{plan.component} ({plan.precision})"
        if plan.action == "reuse":
            progress(f"{label}: {plan.reason}")
            continue
        progress(f"{label}: building engine {plan.cache_key}: {plan.reason}")
        component = manifest.components[plan.component]
        plan_path = folder / plan.path
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        partial = plan_path.with_name(plan_path.name + ".partial")
        # A LoRA-ready graph is built with its branches folded away (the base model, exactly);
        # run-time LoRA then refits the base weights (sdrt/adapters/lora_refit.py).
        onnx_path = folder / component.file
        folded = (
            write_folded_copy(onnx_path, component.lora_branches)
            if component.lora_branches
            else None
        )
        try:
            builder.build(
                BuildRequest(
                    onnx_path=folded or onnx_path,
                    plan_path=partial,
                    profile=plan.profile,
                    fp16=plan.precision == "fp16",
                    refit=options.refit,
                    optimization_level=options.optimization_level,
                    timing_cache=timing_cache,
                    graph_precision=component.precision,
                )
            )
            os.replace(partial, plan_path)
        finally:
            partial.unlink(missing_ok=True)
            if folded is not None:
                folded.unlink(missing_ok=True)
        thresholds = options.thresholds if plan.precision == "fp16" else FP32
        verification = verifier.verify(folder, component, plan_path, plan.profile, thresholds)
        engine = Engine(
            target=TARGET,
            component=plan.component,
            path=plan.path,
            cache_key=plan.cache_key,
            profile=plan.profile,
            options=plan.options,
            library_versions={environment.library: environment.library_version},
            device={
                "name": environment.device_name,
                "compute_capability": environment.compute_capability,
            },
            verification=verification,
            sha256=sha256_file(plan_path),
            size=plan_path.stat().st_size,
        )
        manifest = _with_record(manifest, engine, plan.replaces)
        write_manifest(folder, manifest)
        record_engine_plan(folder, engine)  # just hashed: the next load need not
        if plan.replaces is not None:
            _remove_stale(folder, plan.replaces, keep=plan.path)
        if verification.passed:
            progress(
                f"{label}: verified, max abs error {verification.max_abs_error:.3g}, "
                f"max relative error {verification.max_rel_error:.3g}"
            )
        else:
            failed.append(failure_message(label, verification))
    if failed:
        raise VerificationError("; ".join(failed))
    return BuildReport(manifest=manifest, plans=plans)


# ---------------------------------------------------------------------------- the real thing


def detect_environment() -> BuildEnvironment:
    """TensorRT version and the compute capability of CUDA device 0 (the one machine probe)."""
    machine = probe_machine()
    missing = [
        package
        for package, version in (
            ("tensorrt", machine.tensorrt_version),
            ("cupy", machine.cupy_version),
        )
        if version is None
    ]
    if missing:
        raise BackendUnavailableError(
            f"TensorRT engines need {' and '.join(missing)} (pip install 'sdrt[gpu]' on a machine "
            "with an NVIDIA GPU)"
        )
    if machine.cuda_devices == 0:
        raise BackendUnavailableError("TensorRT engines need a CUDA device (cupy sees none)")
    return build_environment(machine)


def check_can_build():
    """The build environment, or BackendUnavailableError saying what this machine lacks."""
    environment = detect_environment()
    try:
        import polygraphy  # noqa: F401  (the builder's loaders)
    except ImportError:
        raise BackendUnavailableError(
            "building TensorRT engines needs polygraphy (pip install polygraphy)"
        ) from None
    return environment


def build_and_report(folder, options, environment) -> int:
    """Build (or reuse) the engines, printing what is done: `sdrt engines build` and
    `sdrt build --target tensorrt`."""
    print(
        f"building for TensorRT {environment.library_version} on {environment.device_name} "
        f"(compute capability {environment.compute_capability})",
        file=sys.stderr,
    )
    report = build_engines(
        folder,
        options,
        environment=environment,
        progress=lambda message: print(message, file=sys.stderr),
    )
    built = sum(p.action == "build" for p in report.plans)
    print(f"{built} engine(s) built, {len(report.plans) - built} reused, in {folder}")
    return 0


class TensorRTBuilder:
    """Builds one plan through Polygraphy's loaders (the TensorRT builder API, in process).

    TensorRT 10 makes fp16 engines from fp32 graphs with its FP16 builder flag. TensorRT 11
    removed weak typing (the flag is gone; networks run in their graph's types), so there
    an fp32 graph is converted to fp16 first (engines/fp16_graph.py) and built as it is.
    """

    def build(self, request: BuildRequest) -> None:
        import tensorrt as trt
        from polygraphy.backend.trt import (
            CreateConfig,
            Profile,
            engine_bytes_from_network,
            network_from_onnx_path,
        )

        weakly_typed = hasattr(trt.BuilderFlag, "FP16")
        profile = Profile()
        for name, levels in request.profile.items():
            profile.add(name, min=levels["min"], opt=levels["opt"], max=levels["max"])
        config = CreateConfig(
            fp16=request.fp16 if weakly_typed else None,
            # Polygraphy clears TensorRT's TF32 flag unless asked (CreateConfig's default);
            # said here because the fp32 engines' verification gate (compare.FP32) rests on it.
            tf32=False,
            refittable=request.refit,
            profiles=[profile],
            builder_optimization_level=request.optimization_level,
            load_timing_cache=str(request.timing_cache) if request.timing_cache.is_file() else None,
        )
        with tempfile.TemporaryDirectory(prefix=".fp16-", dir=request.plan_path.parent) as scratch:
            onnx_path = request.onnx_path
            if request.fp16 and not weakly_typed and request.graph_precision == "fp32":
                onnx_path = write_fp16_copy(onnx_path, Path(scratch))
            network = network_from_onnx_path(
                str(onnx_path), strongly_typed=None if weakly_typed else True
            )
            plan = engine_bytes_from_network(
                network, config=config, save_timing_cache=str(request.timing_cache)
            )
        if plan is None:
            raise SdrtError(
                f"TensorRT could not build an engine from {request.onnx_path} (see its log above)"
            )
        request.plan_path.write_bytes(plan)


class TensorRTVerifier:
    """The engine (sdrt's TensorRT session) against ONNX Runtime on the CPU, same inputs."""

    def verify(self, folder, component, plan_path, profile, thresholds) -> Verification:
        import numpy as np
        import onnxruntime as ort
        from sdrt.engines.compare import verify

        from sdrt.backends.tensorrt import TensorRTSession

        reference = ort.InferenceSession(
            str(folder / component.file), providers=["CPUExecutionProvider"]
        )
        output_names = [spec.name for spec in component.outputs]

        def run_reference(feeds):
            return dict(zip(output_names, reference.run(output_names, dict(feeds)), strict=True))

        session = TensorRTSession.load(
            component.name, plan_path, component.inputs, component.outputs
        )

        def run_engine(feeds):
            return {name: np.asarray(value.get()) for name, value in session.run(feeds).items()}

        return verify(
            run_reference, run_engine, component.inputs, verification_cases(profile), thresholds
        )
