"""Bring onnxruntime-gpu and the small wheels to a GPU machine that has no network.

The plan of shared/gpu/README.md, as one script (standard library only, so that it runs on
the GPU machine before anything is installed there). Not yet run on a GPU machine.

On a machine with network (ours), into a folder git ignores (``carry/``):

    python benchmarks/gpu_carry.py pack carry            # 57.7 MiB + 6.4 MiB, two transfers

which downloads ``onnxruntime-gpu==1.31.1`` (CUDA 13, cp312, manylinux_2_28), zeroes every
non-sm_90 GPU image in its CUDA provider library (``strip_fatbin``: an H100/H200 cannot run
them anyway), packs the tree with ``xz -9e`` into ``carry/ort/ort-gpu.tar.xz``, and puts
the small wheels the check needs (diffusers, onnx-graphsurgeon, importlib_metadata, and
this project) into ``carry/wheels/``. Then, on the GPU machine, two commands straight
after each other (files left by one are there for the next):

    # 1. carry=["carry/ort"]: ONNX Runtime with CUDA, and a one-node CUDA session
    python benchmarks/gpu_carry.py unpack carry --home $HOME && \\
        PYTHONPATH=$HOME/ort python benchmarks/gpu_carry.py probe
    # 2. carry=["carry/wheels"]: the wheels, then the GPU check (its report under $OUT)
    python benchmarks/gpu_carry.py unpack carry --home $HOME && \\
        PYTHONPATH=$HOME/ort:$HOME/site timeout 540 python -m sdrt.benchmarks.gpu_check $OUT/gpu

If the probe fails, the stripped provider library is the first suspect.
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ORT_GPU = "onnxruntime-gpu==1.31.1"
PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
SMALL_WHEELS = ("diffusers", "onnx-graphsurgeon", "importlib_metadata")
# Left out of the carried tree, to fit one transfer: the C API library (the Python binding
# links ONNX Runtime in itself: readelf shows no libonnxruntime among its NEEDED) and
# TensorRT's execution provider (it needs libnvinfer, which the GPU machine cannot have).
OMIT = (
    "onnxruntime/capi/libonnxruntime.so.",
    "onnxruntime/capi/libonnxruntime_providers_tensorrt.so",
)
TRANSFER_LIMIT = 64 * 2**20  # what one device command may carry, working tree included
FATBIN_MAGIC = 0xBA55ED50


# ---------------------------------------------------------------------------- strip_fatbin


def _section(data: bytes | bytearray, wanted: str) -> tuple[int, int] | None:
    """(offset, size) of the ELF64 little-endian section named ``wanted``, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, offset, size

    _, names_at, _ = header(shstrndx)
    for i in range(shnum):
        name, offset, size = header(i)
        end = data.index(b"\0", names_at + name)
        if data[names_at + name : end].decode() == wanted:
            return offset, size
    return None


def strip_fatbin(src: Path, dst: Path, keep: int = 90) -> int:
    """Zero the payload of every cubin in ``src``'s .nv_fatbin whose arch is not ``keep``;
    headers stay, so the CUDA runtime still sees every entry. Returns the bytes zeroed.
    (shared/gpu/strip_fatbin.py, reading the section table itself instead of readelf.)"""
    data = bytearray(Path(src).read_bytes())
    found = _section(data, ".nv_fatbin")
    if found is None:
        raise ValueError(f"{src} has no .nv_fatbin section")
    start, size = found
    p, end_section, zeroed = start, start + size, 0
    while p + 16 <= end_section:
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, p)
        if magic != FATBIN_MAGIC:
            p += 8
            continue
        q, end = p + header_size, p + header_size + fat_size
        while q < end:
            _kind, _ev, entry_header, payload = struct.unpack_from("<HHIQ", data, q)
            (arch,) = struct.unpack_from("<I", data, q + 28)
            if arch != keep:
                data[q + entry_header : q + entry_header + payload] = bytes(payload)
                zeroed += payload
            q += entry_header + payload
        p = end
    Path(dst).write_bytes(data)
    return zeroed


# ---------------------------------------------------------------------------- pack


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def pack_ort(out: Path, wheel: Path | None = None) -> Path:
    """``out/ort/ort-gpu.tar.xz``: the wheel's tree with the provider stripped to sm_90."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if wheel is None:
            _pip(
                "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                "--platform", "manylinux_2_28_x86_64", "--dest", str(scratch), ORT_GPU,
            )  # fmt: skip
            (wheel,) = scratch.glob("onnxruntime_gpu-*.whl")
        tree = scratch / "tree"
        with zipfile.ZipFile(wheel) as archive:
            kept = [n for n in archive.namelist() if not n.startswith(OMIT)]
            archive.extractall(tree, members=kept)
        provider = tree / PROVIDER
        zeroed = strip_fatbin(provider, provider)
        print(f"zeroed {zeroed / 2**20:.1f} MiB of non-sm_90 GPU code in {PROVIDER}")
        target = out / "ort" / "ort-gpu.tar.xz"
        target.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(target, "w:xz", preset=9 | lzma.PRESET_EXTREME) as tar:  # xz -9e
            for path in sorted(tree.iterdir()):
                tar.add(path, arcname=path.name)
    size = target.stat().st_size
    print(f"{target}: {size / 2**20:.1f} MiB (one transfer holds {TRANSFER_LIMIT / 2**20:.0f})")
    if size > TRANSFER_LIMIT:
        raise SystemExit(f"{target} is over one transfer; strip more or split it")
    return target


def build_wheel(project: Path, dest: Path) -> Path:
    """This project's wheel in ``dest``, built as a user's ``pip wheel`` builds it.

    tests/test_wheel.py installs this same wheel into a bare venv and runs it, so what the
    GPU machine gets is what CI checked.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        # From a copy of what git would commit: setuptools zips its build/lib folder, so a
        # build in the checkout would also ship files a former build left there.
        source = Path(scratch) / "source"
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=project, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
        for name in filter(None, listed.split("\0")):
            if (project / name).is_file():  # not a file deleted but not yet committed
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(project / name, source / name)
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--wheel-dir",
             str(dest), str(source)],
            capture_output=True, text=True,
        )  # fmt: skip
    if built.returncode != 0:
        raise SystemExit(f"pip wheel failed:\n{built.stdout[-4000:]}{built.stderr[-4000:]}")
    # setuptools ships a folder of files that no package claims, but only with a warning
    # that a later setuptools will not: a data folder must be in setup.py's DATA_PACKAGES.
    absent = sorted(
        set(re.findall(r"Package '([\w.]+)' is absent from the", built.stdout + built.stderr))
    )
    if absent:
        raise SystemExit(f"the wheel ships folders its packages do not claim: {absent}")
    (wheel,) = dest.glob("sdrt-*.whl")  # one version at a time in dest
    return wheel


def pack_wheels(out: Path, project: Path) -> Path:
    """``out/wheels/``: the small wheels the GPU check needs, and this project's."""
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(wheels), *SMALL_WHEELS)
    build_wheel(project, wheels)
    size = sum(p.stat().st_size for p in wheels.iterdir())
    print(f"{wheels}: {size / 2**20:.1f} MiB")
    return wheels


# ---------------------------------------------------------------------------- on the GPU machine


def unpack(carry: Path, home: Path) -> dict[str, str]:
    """Unpack what this command carried: the ORT tree into home/ort, wheels into home/site."""
    done = {}
    tarball = carry / "ort" / "ort-gpu.tar.xz"
    if tarball.is_file():
        with tarfile.open(tarball) as tar:
            if hasattr(tarfile, "data_filter"):  # Python 3.12 (and 3.11.4+)
                tar.extractall(home / "ort", filter="data")
            else:
                tar.extractall(home / "ort")
        done["ort"] = str(home / "ort")
    wheels = sorted((carry / "wheels").glob("*.whl")) if (carry / "wheels").is_dir() else []
    if wheels:
        target = home / "site"
        _pip("install", "--no-deps", "--no-index", "--target", str(target), *map(str, wheels))
        done["site"] = str(target)
    print(json.dumps({"unpacked": done}))
    return done


def probe() -> dict:
    """preload_dlls, the providers, and one Add node run on CUDA against numpy."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "probe",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    x = np.arange(4, dtype=np.float32)
    (z,) = session.run(["z"], {"x": x, "y": x})
    result = {
        "onnxruntime": ort.__version__,
        "file": ort.__file__,
        "providers": ort.get_available_providers(),
        "session_providers": session.get_providers(),
        "add_ok": bool(np.array_equal(z, 2 * x)),
    }
    print(json.dumps(result))
    if "CUDAExecutionProvider" not in result["session_providers"] or not result["add_ok"]:
        raise SystemExit("the CUDA provider did not run the probe (suspect the stripped library)")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="on a machine with network: make carry/ort and carry/wheels")
    pack.add_argument("out", type=Path)
    pack.add_argument("--wheel", type=Path, help="an onnxruntime-gpu wheel already downloaded")
    pack.add_argument("--no-wheels", action="store_true", help="only the ONNX Runtime part")
    unpacking = sub.add_parser("unpack", help="on the GPU machine: unpack what was carried")
    unpacking.add_argument("carry", type=Path)
    unpacking.add_argument("--home", type=Path, default=Path.home())
    sub.add_parser("probe", help="on the GPU machine: a CUDA session on a one-node graph")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack_ort(args.out, args.wheel)
        if not args.no_wheels:
            pack_wheels(args.out, Path(__file__).resolve().parents[1])
    elif args.command == "unpack":
        unpack(args.carry, args.home)
    else:
        probe()
    return 0


if __name__ == "__main__":
    sys.exit(main())
