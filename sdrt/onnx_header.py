"""An ONNX file's header (IR version, producer, opsets, weight dtypes) without the onnx
package.

The runtime does not depend on ``onnx``, and ONNX Runtime exposes neither a model's opset
nor its weights' dtypes. A ModelProto is a protobuf message whose small top-level fields
sit around the graph; this reads them, and in the graph only each initializer's data_type,
seeking past nodes and weight bytes, so that a 2 GB graph costs a few thousand small reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

from sdrt.errors import ModelFolderError

# ModelProto field numbers (onnx/onnx.proto3)
_IR_VERSION, _PRODUCER_NAME, _PRODUCER_VERSION, _OPSET_IMPORT = 1, 2, 3, 8
_GRAPH = 7
# OperatorSetIdProto
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_GRAPH_INITIALIZER = 5  # GraphProto
_TENSOR_DATA_TYPE = 2  # TensorProto
FLOAT, FLOAT16 = 1, 10  # TensorProto.DataType
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
DEFAULT_DOMAIN = ""  # "ai.onnx", the standard operators


@dataclass(frozen=True)
class OnnxHeader:
    ir_version: int
    producer_name: str
    producer_version: str
    opsets: dict[str, int] = field(default_factory=dict)  # domain -> version
    initializer_types: dict[int, int] = field(default_factory=dict)  # data_type -> count

    @property
    def weights_precision(self) -> str:
        """ "fp16" where most floating-point weights are float16 (fp32 islands aside)."""
        counts = self.initializer_types
        return "fp16" if counts.get(FLOAT16, 0) > counts.get(FLOAT, 0) else "fp32"

    @property
    def opset(self) -> int:
        """The standard operator set's version (0 when the file names none)."""
        return self.opsets.get(DEFAULT_DOMAIN, self.opsets.get("ai.onnx", 0))

    @property
    def producer(self) -> str:
        return " ".join(p for p in (self.producer_name, self.producer_version) if p) or "unknown"


def read_onnx_header(path: str | os.PathLike) -> OnnxHeader:
    """The header fields of an ONNX file; ModelFolderError where it is not a ModelProto."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _read_model(f, size)
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{path}: not a readable ONNX model ({e})") from None


def _read_model(f: BinaryIO, size: int) -> OnnxHeader:
    ir_version, name, version, opsets, types = 0, "", "", {}, {}
    while f.tell() < size:
        number, wire = _key(f)
        if wire == _VARINT:
            value = _varint(f)
            if number == _IR_VERSION:
                ir_version = value
        elif wire == _LENGTH:
            length = _varint(f)
            if f.tell() + length > size:
                raise ValueError(f"field {number} runs past the end of the file")
            if number in (_PRODUCER_NAME, _PRODUCER_VERSION, _OPSET_IMPORT):
                data = f.read(length)
                if number == _PRODUCER_NAME:
                    name = data.decode("utf-8", "replace")
                elif number == _PRODUCER_VERSION:
                    version = data.decode("utf-8", "replace")
                else:
                    domain, opset = _opset(data)
                    opsets[domain] = opset
            elif number == _GRAPH:
                _scan_graph(f, f.tell() + length, types)
            else:
                f.seek(length, os.SEEK_CUR)  # docs, metadata, functions
        else:
            _skip(f, wire, number)
    if ir_version == 0:
        raise ValueError("no ir_version field: not an ONNX ModelProto")
    return OnnxHeader(ir_version, name, version, opsets, types)


def _scan_graph(f: BinaryIO, end: int, types: dict[int, int]) -> None:
    """Count the initializers' data types; seek past everything else."""
    while f.tell() < end:
        number, wire = _key(f)
        if wire != _LENGTH:
            _skip(f, wire, number)
            continue
        length = _varint(f)
        stop = f.tell() + length
        if stop > end:
            raise ValueError(f"graph field {number} runs past the graph")
        if number == _GRAPH_INITIALIZER:
            data_type = _tensor_data_type(f, stop)
            types[data_type] = types.get(data_type, 0) + 1
        f.seek(stop)
    f.seek(end)


def _tensor_data_type(f: BinaryIO, end: int) -> int:
    """A TensorProto's data_type (it comes after dims, before the data)."""
    while f.tell() < end:
        number, wire = _key(f)
        if wire == _VARINT:
            value = _varint(f)
            if number == _TENSOR_DATA_TYPE:
                return value
        elif wire == _LENGTH:
            f.seek(_varint(f), os.SEEK_CUR)
        else:
            _skip(f, wire, number)
    return 0


def _skip(f: BinaryIO, wire: int, number: int) -> None:
    if wire == _VARINT:
        _varint(f)
    elif wire in (_FIXED64, _FIXED32):
        f.seek(8 if wire == _FIXED64 else 4, os.SEEK_CUR)
    elif wire == _LENGTH:
        f.seek(_varint(f), os.SEEK_CUR)
    else:
        raise ValueError(f"unexpected protobuf wire type {wire} (field {number})")


def _opset(data: bytes) -> tuple[str, int]:
    from io import BytesIO

    f, domain, version = BytesIO(data), "", 0
    while f.tell() < len(data):
        number, wire = _key(f)
        if wire == _VARINT:
            value = _varint(f)
            if number == _OPSET_VERSION:
                version = value
        elif wire == _LENGTH:
            chunk = f.read(_varint(f))
            if number == _OPSET_DOMAIN:
                domain = chunk.decode("utf-8", "replace")
        else:
            raise ValueError(f"unexpected protobuf wire type {wire} in opset_import")
    return domain, version


def _key(f: BinaryIO) -> tuple[int, int]:
    key = _varint(f)
    return key >> 3, key & 7


def _varint(f: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = f.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")
