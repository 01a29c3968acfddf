"""Which backend runs a model folder, resolved once per load.

Each backend is one module under sdrt/backends/ with a ``BACKEND`` object (the Backend
protocol in protocol.py); this table names them, in ``auto``'s order of preference.
Adding a backend is one new module and one line here. Modules are imported when a
backend is considered, and import no GPU library until they open sessions.

``auto`` takes the first backend whose needs the machine meets (one probe,
sdrt/backends/machine.py) and which can run the folder, and logs why the better ones were
passed over; an explicit backend that cannot run here raises BackendUnavailableError
naming what is missing.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdrt.backends.machine import Machine, probe_machine
from sdrt.backends.protocol import Backend, Session
from sdrt.errors import BackendUnavailableError, InputError
from sdrt.manifest import Manifest

logger = logging.getLogger(__name__)

# backend name -> module under sdrt.backends
MODULES = {
    "tensorrt": "tensorrt",
    "ort-cuda": "ort_cuda",
    "ort-cpu": "ort_cpu",
    "openvino": "openvino",
}
# The ones auto considers, best first. openvino is asked for by name only: on the CPU auto
# stays with ONNX Runtime, which every install has (sdrt/backends/openvino.py says why).
AUTO_ORDER = ("tensorrt", "ort-cuda", "ort-cpu")
AUTO = "auto"
BACKENDS = (AUTO, *sorted(MODULES))


def backend_named(name: str) -> Backend:
    if name not in MODULES:
        raise InputError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    return importlib.import_module(f"sdrt.backends.{MODULES[name]}").BACKEND


@dataclass(frozen=True)
class Selection:
    """The backend a load runs on, why, and the machine it was chosen for."""

    backend: str
    reason: str
    machine: Machine

    @property
    def options_type(self) -> type:
        return backend_named(self.backend).options_type

    def open_sessions(
        self, folder: Path, manifest: Manifest, names: tuple[str, ...], options: Any = None
    ) -> dict[str, Session]:
        return backend_named(self.backend).open_sessions(
            Path(folder), manifest, names, self.machine, options
        )


def _problems(backend: Backend, manifest: Manifest | None, machine: Machine) -> list[str]:
    missing = backend.missing(machine)
    if not missing and manifest is not None:
        problem = backend.folder_problem(manifest, machine)
        missing = [problem] if problem else []
    return missing


def select_backend(
    requested: str,
    manifest: Manifest | None = None,
    *,
    probe: Callable[[], Machine] = probe_machine,
) -> Selection:
    """The backend to run ``manifest``'s folder with; see the module docstring."""
    if requested != AUTO:
        backend = backend_named(requested)
        machine = probe()
        missing = backend.missing(machine)
        if missing:
            raise BackendUnavailableError(
                f"backend {requested!r} is not available here: it needs {'; '.join(missing)}"
            )
        problem = backend.folder_problem(manifest, machine) if manifest is not None else None
        if problem:
            raise BackendUnavailableError(problem)
        return Selection(requested, "requested", machine)
    machine = probe()
    passed_over = []
    for name in AUTO_ORDER:
        missing = _problems(backend_named(name), manifest, machine)
        if not missing:
            reason = "the best backend this machine has"
            if passed_over:
                reason += " (" + "; ".join(passed_over) + ")"
            logger.info("backend auto: picked %s, %s", name, reason)
            return Selection(name, reason, machine)
        passed_over.append(f"not {name}: needs {', '.join(missing)}")
    raise BackendUnavailableError("no backend can run here: " + "; ".join(passed_over))


def create_sessions(
    folder: str | Path,
    manifest: Manifest,
    backend: str,
    components: tuple[str, ...] | None = None,
    options: Any = None,
) -> dict[str, Session]:
    """Resolve ``backend`` and open one session per component (all, or the named ones)."""
    names = tuple(manifest.components) if components is None else components
    return select_backend(backend, manifest).open_sessions(folder, manifest, names, options)
