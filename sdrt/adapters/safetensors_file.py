"""Read a .safetensors file with numpy alone (the runtime does not depend on safetensors).

The format: an 8-byte little-endian header length, a JSON header mapping each tensor name
to its dtype, shape and [begin, end) byte offsets in the data that follows (plus an
optional ``__metadata__`` of strings). The file is memory-mapped; tensors are views.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path

import numpy as np

from sdrt.errors import InputError

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
MAX_HEADER_BYTES = 100 * 2**20  # what the safetensors library itself accepts


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors by name, metadata); InputError naming the file for anything malformed.

    bf16 tensors are widened to float32 (numpy has no bfloat16)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror or e})") from None
    header_len = int.from_bytes(data[:8], "little")
    if header_len > min(MAX_HEADER_BYTES, size - 8):
        raise _bad(path, f"a header length of {header_len} bytes in a {size}-byte file")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad(path, f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    start = 8 + header_len
    tensors = {name: _tensor(path, name, entry, data, start) for name, entry in header.items()}
    return tensors, {str(k): str(v) for k, v in dict(metadata).items()}


def _tensor(path: Path, name: str, entry, data: mmap.mmap, start: int) -> np.ndarray:
    try:
        dtype_name, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        shape = tuple(int(d) for d in shape)
    except (TypeError, KeyError, ValueError):
        raise _bad(path, f"tensor {name!r} has no valid dtype/shape/data_offsets") from None
    bf16 = dtype_name == "BF16"
    dtype = np.dtype(np.uint16 if bf16 else DTYPES.get(dtype_name, np.void))
    if dtype == np.void:
        raise _bad(path, f"tensor {name!r} has the unsupported dtype {dtype_name!r}")
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= len(data) - start or end - begin != count * dtype.itemsize:
        raise _bad(
            path,
            f"tensor {name!r} ({dtype_name} {list(shape)}) has data_offsets [{begin}, {end}] "
            f"that do not fit its size or the file's {len(data) - start} data bytes",
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(shape)
    if bf16:  # the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _bad(path: Path, what: str) -> InputError:
    return InputError(f"{path}: not a valid .safetensors file: {what}")
