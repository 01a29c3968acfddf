"""The carry script for GPU machines, as far as the CPU allows: strip, pack, unpack.

The CUDA probe itself needs the GPU; here a small shared library with a synthetic
.nv_fatbin section (made with gcc and objcopy) stands in for ONNX Runtime's CUDA provider.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile

import pytest
from sdrt.benchmarks.gpu_carry import FATBIN_MAGIC, PROVIDER, main, pack_ort, strip_fatbin, unpack

pytestmark = pytest.mark.skipif(
    not (shutil.which("gcc") and shutil.which("objcopy")), reason="needs gcc and objcopy"
)
ENTRY_HEADER = 64


def fatbin(entries: list[tuple[int, bytes]]) -> bytes:
    """A fatbin container: its 16-byte header, then per cubin a 64-byte header (arch at 28)."""
    body = b""
    for arch, payload in entries:
        header = bytearray(ENTRY_HEADER)
        struct.pack_into("<HHIQ", header, 0, 2, 0x101, ENTRY_HEADER, len(payload))
        struct.pack_into("<I", header, 28, arch)
        body += bytes(header) + payload
    return struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, len(body)) + body


@pytest.fixture
def provider(tmp_path):
    source = tmp_path / "lib.c"
    source.write_text("int sdrt_probe(void) { return 42; }\n")
    plain = tmp_path / "plain.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", plain, source], check=True)
    blob = tmp_path / "fatbin.bin"
    payloads = {80: b"\x80" * 4000, 90: b"\x90" * 3000, 120: b"\x12" * 2000}
    blob.write_bytes(fatbin(list(payloads.items())))
    library = tmp_path / "libonnxruntime_providers_cuda.so"
    subprocess.run(["objcopy", "--add-section", f".nv_fatbin={blob}", plain, library], check=True)
    return library, payloads


def test_strip_keeps_sm_90_and_zeroes_the_rest(provider, tmp_path):
    library, payloads = provider
    out = tmp_path / "stripped.so"
    assert strip_fatbin(library, out) == 4000 + 2000
    data = out.read_bytes()
    assert payloads[90] in data  # Hopper's cubin is untouched
    assert payloads[80] not in data and payloads[120] not in data
    assert len(data) == library.stat().st_size  # headers and layout kept
    with pytest.raises(ValueError, match="no .nv_fatbin section"):
        strip_fatbin(tmp_path / "plain.so", tmp_path / "x.so")


def test_pack_and_unpack_the_onnxruntime_tree(provider, tmp_path):
    library, payloads = provider
    wheel = tmp_path / "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(library, PROVIDER)
        archive.writestr("onnxruntime/__init__.py", "__version__ = '1.31.1'\n")
        archive.writestr("onnxruntime/capi/libonnxruntime.so.1.31.1", b"C API")
        archive.writestr("onnxruntime/capi/libonnxruntime_providers_tensorrt.so", b"TRT EP")
    carry = tmp_path / "carry"
    tarball = pack_ort(carry, wheel)
    assert tarball == carry / "ort" / "ort-gpu.tar.xz"
    with tarfile.open(tarball) as tar:
        assert PROVIDER in tar.getnames()
    home = tmp_path / "home"
    assert unpack(carry, home) == {"ort": str(home / "ort")}
    unpacked = (home / "ort" / PROVIDER).read_bytes()
    assert payloads[90] in unpacked and payloads[80] not in unpacked
    assert (home / "ort" / "onnxruntime" / "__init__.py").is_file()
    assert sorted(p.name for p in (home / "ort" / "onnxruntime" / "capi").iterdir()) == [
        "libonnxruntime_providers_cuda.so"
    ]  # the C API library and TensorRT's provider are left out


def test_the_command_line(provider, tmp_path, capsys):
    library, _ = provider
    wheel = tmp_path / "ort.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(library, PROVIDER)
    assert main(["pack", str(tmp_path / "c"), "--wheel", str(wheel), "--no-wheels"]) == 0
    assert "zeroed 0.0 MiB of non-sm_90 GPU code" in capsys.readouterr().out
    assert main(["unpack", str(tmp_path / "c"), "--home", str(tmp_path / "h")]) == 0
    assert (tmp_path / "h" / "ort" / PROVIDER).is_file()
    assert sys.modules["sdrt.benchmarks.gpu_carry"].TRANSFER_LIMIT == 64 * 2**20
