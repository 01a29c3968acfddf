"""The default values of a folder's adaptable weights, memory-mapped from the graph files.

sdrt.json records, for each adaptable weight, the file holding its raw bytes (the graph, or
its external data) and the offset (export/adaptable.py); reading one maps those bytes and
touches nothing else, so only the modules a LoRA touches are ever paged in.
"""

from __future__ import annotations

import mmap
import threading
from pathlib import Path

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.manifest import AdaptableWeight


class BaseWeights:
    """Read-only views of adaptable weights' defaults; safe from several threads."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._maps: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()

    def _map(self, relative: str) -> mmap.mmap:
        with self._lock:
            mapped = self._maps.get(relative)
            if mapped is None:
                path = self.folder / relative
                try:
                    with open(path, "rb") as f:
                        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                except OSError as e:
                    raise ModelFolderError(
                        f"{path}: cannot map the graph's weights ({e})"
                    ) from None
                self._maps[relative] = mapped
            return mapped

    def read(self, weight: AdaptableWeight) -> np.ndarray:
        data = self._map(weight.data_file)
        dtype = np.dtype(weight.dtype)
        count = int(np.prod(weight.shape, dtype=np.int64))
        if weight.offset < 0 or weight.offset + count * dtype.itemsize > len(data):
            raise ModelFolderError(
                f"{self.folder / weight.data_file}: the weight {weight.input} recorded at byte "
                f"{weight.offset} ({count * dtype.itemsize} bytes) lies outside the file "
                f"({len(data)} bytes); rebuild the folder"
            )
        # ONNX raw data is little-endian, as numpy's native order on every platform we run.
        return np.frombuffer(data, dtype=dtype, count=count, offset=weight.offset).reshape(
            weight.shape
        )
