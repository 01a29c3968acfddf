"""The one machine probe: what this machine offers the backends, probed without side
effects beyond imports (the ``tensorrt`` and ``cupy`` packages, a CUDA device through
cupy, ONNX Runtime's execution providers)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

GPU_EXTRA = "pip install 'sdrt[gpu]'"


@dataclass(frozen=True)
class Machine:
    """What this machine offers the GPU backends; each field None/0 when absent."""

    tensorrt_version: str | None
    cupy_version: str | None
    cuda_devices: int
    ort_providers: tuple[str, ...]
    compute_capability: str | None = None  # of CUDA device 0, e.g. "8.9"
    device_name: str = ""  # of CUDA device 0

    def missing_cuda(self) -> list[str]:
        """What the GPU backends' device arrays need that this machine lacks."""
        if self.cupy_version is None:
            return [f"cupy ({GPU_EXTRA})"]
        if self.cuda_devices == 0:
            return ["a CUDA device (cupy sees none)"]
        return []


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__


def _cuda_device() -> tuple[str | None, int, str | None, str]:
    """(cupy version, device count, compute capability, name) of device 0."""
    try:
        import cupy
    except ImportError:
        return None, 0, None, ""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        raw = cupy.cuda.Device(0).compute_capability if count else None  # "89"
    except Exception as e:  # cupy present but no driver/device: CUDARuntimeError and kin
        logger.debug("cupy found no CUDA device: %s", e)
        return cupy.__version__, 0, None, ""
    if not count:
        return cupy.__version__, 0, None, ""
    return cupy.__version__, count, f"{raw[:-1]}.{raw[-1]}", _device_name(cupy)


def _device_name(cupy) -> str:
    """Informational only (engines are keyed on the compute capability)."""
    try:
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    except Exception:  # a driver without the property, or a stand-in cupy
        return ""
    return name.decode() if isinstance(name, bytes) else str(name)


def probe_machine() -> Machine:
    cupy_version, devices, capability, name = _cuda_device()
    try:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    except ImportError:
        providers = ()
    return Machine(_tensorrt_version(), cupy_version, devices, providers, capability, name)
