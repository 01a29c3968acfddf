"""Backends: each one module (ort_cpu.py, ort_cuda.py, tensorrt.py) implementing the
Backend protocol (protocol.py), listed in registry.py, which resolves one per load.

Backend modules are imported on use, so a CPU-only install never imports TensorRT.
"""

from sdrt.backends.protocol import Backend, Session, check_feeds
from sdrt.backends.registry import BACKENDS, Selection, create_sessions, select_backend

__all__ = [
    "BACKENDS",
    "Backend",
    "Selection",
    "Session",
    "check_feeds",
    "create_sessions",
    "select_backend",
]
