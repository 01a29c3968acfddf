"""Which backend runs a model folder: ``auto`` picks tensorrt, then ort-cuda, then ort-cpu.

The choice follows what the machine has, probed without side effects beyond imports:
the ``tensorrt`` and ``cupy`` packages, a CUDA device (cupy's device count), ONNX Runtime's
CUDA execution provider, and, for tensorrt, engines in the folder that were built and
verified for this TensorRT version and GPU. ``auto`` logs what it picked and why the
better ones were passed over; an explicit backend that cannot run here raises
BackendUnavailableError naming what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sdrt.errors import BackendUnavailableError, InputError, SdrtError
from sdrt.manifest import Manifest

logger = logging.getLogger(__name__)

ORDER = ("tensorrt", "ort-cuda", "ort-cpu")  # auto's preference
GPU_EXTRA = "pip install 'sdrt[gpu]'"


@dataclass(frozen=True)
class Machine:
    """What this machine offers the GPU backends; each field None/0 when absent."""

    tensorrt_version: str | None
    cupy_version: str | None
    cuda_devices: int
    ort_providers: tuple[str, ...]
    compute_capability: str | None = None


def probe_machine() -> Machine:
    try:
        import tensorrt

        tensorrt_version = tensorrt.__version__
    except ImportError:
        tensorrt_version = None
    cuda_devices, cupy_version, capability = 0, None, None
    try:
        import cupy

        cupy_version = cupy.__version__
        cuda_devices = cupy.cuda.runtime.getDeviceCount()
        if cuda_devices:
            raw = cupy.cuda.Device(0).compute_capability
            capability = f"{raw[:-1]}.{raw[-1]}"
    except ImportError:
        pass
    except Exception as e:  # cupy present but no driver/device: CUDARuntimeError and kin
        logger.debug("cupy found no CUDA device: %s", e)
        cuda_devices = 0
    try:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    except ImportError:
        providers = ()
    return Machine(tensorrt_version, cupy_version, cuda_devices, providers, capability)


def missing_for(backend: str, machine: Machine) -> list[str]:
    """What ``backend`` needs that this machine lacks (empty when it can run)."""
    missing = []
    if backend == "ort-cpu":
        if "CPUExecutionProvider" not in machine.ort_providers:
            missing.append("onnxruntime")
        return missing
    if backend == "tensorrt" and machine.tensorrt_version is None:
        missing.append(f"the tensorrt package ({GPU_EXTRA})")
    if backend == "ort-cuda" and "CUDAExecutionProvider" not in machine.ort_providers:
        missing.append(
            f"ONNX Runtime's CUDAExecutionProvider (onnxruntime-gpu; this onnxruntime has "
            f"{', '.join(machine.ort_providers) or 'no providers'})"
        )
    if machine.cupy_version is None:
        missing.append(f"cupy ({GPU_EXTRA})")
    elif machine.cuda_devices == 0:
        missing.append("a CUDA device (cupy sees none)")
    return missing


def tensorrt_engines_problem(manifest: Manifest, machine: Machine) -> str | None:
    """None when the folder has verified engines for this TensorRT and GPU, else why not."""
    from sdrt.engines.cache_key import BuildEnvironment
    from sdrt.engines.tensorrt import TARGET, usable_engine

    environment = BuildEnvironment(
        TARGET, machine.tensorrt_version or "", machine.compute_capability or ""
    )
    # The components every call needs (SDXL adds its second text encoder).
    needed = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
    for component in (c for c in needed if c in manifest.components):
        try:
            usable_engine(manifest, component, "fp16", environment)
        except SdrtError as e:
            return str(e)
    return None


@dataclass(frozen=True)
class Selection:
    backend: str
    reason: str


def select_backend(
    requested: str,
    manifest: Manifest | None = None,
    *,
    probe: Callable[[], Machine] = probe_machine,
) -> Selection:
    """The backend to run ``manifest``'s folder with; see the module docstring."""
    from sdrt.sessions import BACKENDS

    if requested not in BACKENDS:
        raise InputError(f"backend: expected one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "ort-cpu":
        return Selection(requested, "requested")
    machine = probe()
    if requested != "auto":
        missing = missing_for(requested, machine)
        if missing:
            raise BackendUnavailableError(
                f"backend {requested!r} is not available here: it needs {'; '.join(missing)}"
            )
        if requested == "tensorrt" and manifest is not None:
            problem = tensorrt_engines_problem(manifest, machine)
            if problem:
                raise BackendUnavailableError(problem)
        return Selection(requested, "requested")
    passed_over = []
    for backend in ORDER:
        missing = missing_for(backend, machine)
        if not missing and backend == "tensorrt" and manifest is not None:
            problem = tensorrt_engines_problem(manifest, machine)
            missing = [problem] if problem else []
        if not missing:
            reason = "the best backend this machine has"
            if passed_over:
                reason += " (" + "; ".join(passed_over) + ")"
            logger.info("backend auto: picked %s, %s", backend, reason)
            return Selection(backend, reason)
        passed_over.append(f"not {backend}: needs {', '.join(missing)}")
    raise BackendUnavailableError("no backend can run here: " + "; ".join(passed_over))
