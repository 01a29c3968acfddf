"""Adapter files -> numpy arrays, without torch: safetensors, and torch's zip pickles read safely.

Embeddings and LoRAs are shared as ``.safetensors`` (a JSON header and raw bytes) or as
``torch.save`` files (``.bin``, ``.pt``: a zip holding ``data.pkl`` and one raw file per
storage). The pickle is read by a restricted unpickler that builds only plain containers,
numbers, strings and tensors: any other class or function the pickle names (the way a
malicious pickle runs code) is refused with an error naming it. torch's legacy pre-1.6
format (not a zip) is refused too.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sdrt.errors import InputError

SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": "bfloat16",
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
# torch's storage classes, as pickles name them -> numpy dtype ("bfloat16": widened below).
TORCH_STORAGES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
MAX_HEADER_BYTES = 100 * 2**20  # a safetensors header this big is a corrupt file


def read_tensor_file(path: str | os.PathLike) -> dict[str, Any]:
    """The file's content: a dict of arrays (safetensors), or what the pickle holds (nested
    dicts/lists of arrays, strings and numbers). InputError names the file when it is
    missing, corrupt or of an unknown format."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return _read_torch_zip(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path)
    raise InputError(
        f"{path}: unknown format; expected a .safetensors file or a torch.save zip "
        "(.bin, .pt) (torch's legacy pre-1.6 format is not read: resave it with a current torch)"
    )


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        data = f.read(9)
    return len(data) == 9 and data[8:9] == b"{"


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is float32's upper half: widen the bits."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    if len(data) < 8:
        raise InputError(f"{path}: not a safetensors file (only {len(data)} bytes)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise InputError(f"{path}: not a safetensors file (header of {size} bytes)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: not a safetensors file (header is not a JSON object)")
    body = memoryview(data)[8 + size :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _safetensors_entry(path, name, entry, body)
    return tensors


def _safetensors_entry(path: Path, name: str, entry: Any, body: memoryview) -> np.ndarray:
    try:
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"{path}: tensor {name!r} has an unreadable entry {entry!r} (expected dtype, shape "
            f"and data_offsets; dtypes {', '.join(SAFETENSORS_DTYPES)})"
        ) from None
    raw_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= len(body) or end - begin != count * np.dtype(raw_dtype).itemsize:
        raise InputError(
            f"{path}: tensor {name!r} of shape {list(shape)} does not fit its data "
            f"(bytes {begin}..{end} of {len(body)}): a truncated or corrupt file"
        )
    array = np.frombuffer(body[begin:end], dtype=np.dtype(raw_dtype).newbyteorder("<"))
    array = _bfloat16_to_float32(array) if dtype == "bfloat16" else array.astype(raw_dtype)
    return array.reshape(shape)


# ---------------------------------------------------------------------------- torch zip


class _Storage:
    """A storage named in the pickle, read from the zip when a tensor is rebuilt on it."""

    def __init__(self, array: np.ndarray):
        self.array = array


class _StorageType:
    def __init__(self, name: str):
        self.name = name


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    flat = storage.array
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s < 0 for s in size + stride) or offset < 0:
        raise pickle.UnpicklingError("a tensor with negative sizes or strides")
    if all(size):  # not empty (a scalar reads one element): check the last one is inside
        if len(stride) != len(size):
            raise pickle.UnpicklingError("a tensor whose strides do not match its sizes")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= len(flat):
            raise pickle.UnpicklingError("a tensor reaching past its storage")
    view = np.lib.stride_tricks.as_strided(
        flat[offset:] if len(flat) > offset else flat[:0],
        shape=size,
        strides=tuple(s * flat.itemsize for s in stride),
    )
    return np.array(view)


def _rebuild_parameter(data, *_ignored):
    return data


# (module, name) a torch pickle of tensors may name -> what stands in for it.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.big_endian = big_endian
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if module == "torch" and name in TORCH_STORAGES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(
            f"it names {module}.{name}, which is not a tensor (only tensors, dicts, lists, "
            "strings and numbers are read)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"an unknown persistent id {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"a storage of unknown type {storage_type!r:.80}")
        if key not in self.storages:
            dtype = TORCH_STORAGES[storage_type.name]
            raw_dtype = np.dtype(np.uint16 if dtype == "bfloat16" else dtype)
            raw = self.archive.read(f"{self.prefix}data/{key}")
            array = np.frombuffer(
                raw, dtype=raw_dtype.newbyteorder(">" if self.big_endian else "<")
            )
            array = _bfloat16_to_float32(array) if dtype == "bfloat16" else array.astype(raw_dtype)
            self.storages[key] = _Storage(array)
        return self.storages[key]


def _read_torch_zip(path: Path) -> Any:
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise InputError(
                    f"{path}: a zip, but not a torch.save file (expected one data.pkl, "
                    f"found {len(pickles)})"
                )
            prefix = pickles[0][: -len("data.pkl")]
            order = f"{prefix}byteorder"
            big = order in archive.namelist() and archive.read(order).strip() == b"big"
            with archive.open(pickles[0]) as f:
                return _TensorUnpickler(f, archive, prefix, big).load()
    except InputError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError, ValueError) as e:
        raise InputError(f"{path}: cannot be read as a torch.save file of tensors: {e}") from None
