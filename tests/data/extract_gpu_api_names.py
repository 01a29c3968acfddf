"""Write gpu_api_names.json: the public names of TensorRT's, Polygraphy's and cupy's Python
APIs that sdrt's GPU code and its test fakes touch, taken from the libraries' own sources.

Neither tensorrt nor cupy installs on our CPU machines, so tests/test_gpu_fake_names.py checks
the fakes against this committed list instead of the real modules. Run it against git
checkouts of NVIDIA/TensorRT and cupy/cupy (no build needed; the names are read from the
binding sources, which are what the documented APIs are generated from):

    python tests/data/extract_gpu_api_names.py TENSORRT_CHECKOUT CUPY_CHECKOUT > tests/data/gpu_api_names.json

Sources read, per tag:
- TensorRT (v10.16, v11.1): python/src/infer/pyCore.cpp and pyFoundationalTypes.cpp (the
  pybind11 bindings: every ``.def``/``.def_property*``/``.value`` of a class or enum),
  python/packaging/bindings_wheel/tensorrt/__init__.py (``nptype`` and module helpers);
- Polygraphy (TensorRT's tools/Polygraphy at v11.1): polygraphy/backend/trt/__init__.py's
  exports and CreateConfig's keyword arguments (polygraphy/backend/trt/config.py);
- cupy (v14.2.0): cupy/__init__.py, cupy/cuda/__init__.py (module names),
  cupy/cuda/{stream,memory,device,graph}.pyx(+ .pxd) and cupy/_core/core.pyx (class members),
  cupy_backends/cuda/api/runtime.pyx (``cupy.cuda.runtime`` functions).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

TENSORRT_TAGS = ("v10.16", "v11.1")
CUPY_TAG = "v14.2.0"
TRT_CLASSES = (
    "Runtime",
    "Logger",
    "ICudaEngine",
    "IExecutionContext",
    "TensorIOMode",
    "ExecutionContextAllocationStrategy",
    "BuilderFlag",
    "DataType",
    "Refitter",
    "Weights",
)
CUPY_CLASSES = {
    "cupy/cuda/stream.pyx": ("_BaseStream", "Stream", "Event"),
    "cupy/cuda/memory.pyx": ("UnownedMemory", "MemoryPointer", "BaseMemory"),
    "cupy/cuda/device.pyx": ("Device",),
    "cupy/cuda/graph.pyx": ("Graph",),
    "cupy/_core/core.pyx": ("_ndarray_base", "ndarray"),
}


def show(repo: str, tag: str, path: str) -> str:
    return subprocess.run(
        ["git", "-C", repo, "show", f"{tag}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def pybind_members(source: str) -> dict[str, list[str]]:
    """class or enum name -> its bound member names, from pybind11 chains."""
    starts = list(
        re.finditer(r'py::(?:class_|enum_)<[^;]*?>\s*(?:\w+\s*\{|\()\s*m,\s*"(\w+)"', source)
    )
    members = {}
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(source)
        block = []
        # The chain ends at the next statement as indented as its start (lambdas inside it
        # are indented deeper, and their semicolons do not end it).
        for line in source[match.end() : end].splitlines()[1:]:
            if line.strip() and len(line) - len(line.lstrip()) <= 4:
                break
            block.append(line)
        block = "\n".join(block)
        names = re.findall(
            r'\.(?:def|def_property|def_property_readonly|def_readwrite|def_readonly|def_static|value)\(\s*"(\w+)"',
            block,
        )
        members.setdefault(match.group(1), set()).update(names)
    return {k: sorted(v) for k, v in members.items()}


def module_names(source: str) -> list[str]:
    # The wheel's __init__.py is a template: ##TENSORRT_MODULE## is the module's name.
    source = re.sub(r"##\w+##", "tensorrt", source)
    return sorted(n for n in _body_names(ast.parse(source).body) if not n.startswith("_"))


def _body_names(body) -> set[str]:
    names = set()
    for node in body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Try | ast.If):
            names |= _body_names(node.body)
    return names


def cython_members(source: str, cls: str, pxd: str = "") -> list[str]:
    match = re.search(rf"^(?:cdef )?class {cls}\b.*?:\n(.*?)(?=^\S|\Z)", source, re.M | re.S)
    if match is None:
        raise SystemExit(f"class {cls} not found")
    body = match.group(1)
    names = set(
        re.findall(r"^    (?:cpdef|def|property)\s+(?:[\w.\[\]]+\s+)*?(\w+)\s*[(:]", body, re.M)
    )
    names |= set(re.findall(r"self\.(\w+)\s*=", body))
    pxd_class = re.search(rf"^cdef class {cls}\b.*?:\n(.*?)(?=^\S|\Z)", pxd, re.M | re.S)
    if pxd_class:
        names |= set(re.findall(r"(?:readonly|public)\s+[\w.]+\s+(\w+)", pxd_class.group(1)))
        for group in re.findall(
            r"cdef\s+(?:readonly|public)\s*\n((?:[ \t]+[\w.]+\s+\w+\s*\n)+)", pxd_class.group(1)
        ):
            names |= set(re.findall(r"[\w.]+\s+(\w+)\s*$", group, re.M))
    return sorted(n for n in names if not n.startswith("_") or n in ("__enter__", "__exit__"))


def tensorrt(repo: str) -> dict:
    result = {}
    for tag in TENSORRT_TAGS:
        members = {}
        for path in ("python/src/infer/pyCore.cpp", "python/src/infer/pyFoundationalTypes.cpp"):
            for cls, names in pybind_members(show(repo, tag, path)).items():
                members.setdefault(cls, [])
                members[cls] = sorted(set(members[cls]) | set(names))
        wheel = show(repo, tag, "python/packaging/bindings_wheel/tensorrt/__init__.py")
        result[tag] = {
            "module": sorted(set(module_names(wheel)) | set(members)),
            **{cls: members[cls] for cls in TRT_CLASSES if cls in members},
        }
    return result


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def polygraphy(repo: str) -> dict:
    tag = TENSORRT_TAGS[-1]
    base = "tools/Polygraphy/polygraphy/backend/trt/"
    exports = set()
    for path in ("loader.py", "config.py", "profile.py"):
        source = show(repo, tag, base + path)
        for decorator, name in re.findall(
            r"^(@mod\.export\([^)]*\))\s*\n(?:@.*\n)*(?:class|def) (\w+)", source, re.M
        ):
            exports.add(name)
            if "funcify=True" in decorator:  # Polygraphy also exports a function per loader
                exports.add(_snake(name))
    config = show(repo, tag, base + "config.py")
    # CreateConfig's keywords: its own and those of its base class, _CreateConfigCommon.
    kwargs = set()
    for signature in re.findall(r"def __init__\(\s*self,(.*?)\):", config, re.S):
        kwargs |= set(re.findall(r"^\s*(\w+)\s*=", signature, re.M))
    return {"tag": tag, "polygraphy.backend.trt": sorted(exports), "CreateConfig": sorted(kwargs)}


def cupy(repo: str) -> dict:
    result = {
        "tag": CUPY_TAG,
        "cupy": module_names(show(repo, CUPY_TAG, "cupy/__init__.py")),
        "cupy.cuda": module_names(show(repo, CUPY_TAG, "cupy/cuda/__init__.py")),
        "cupy.cuda.runtime": sorted(
            set(
                re.findall(
                    r"^(?:cpdef|def)\s+(?:[\w.]+\s+)*?(\w+)\s*\(",
                    show(repo, CUPY_TAG, "cupy_backends/cuda/api/runtime.pyx"),
                    re.M,
                )
            )
        ),
    }
    for path, classes in CUPY_CLASSES.items():
        source = show(repo, CUPY_TAG, path)
        try:
            pxd = show(repo, CUPY_TAG, path.replace(".pyx", ".pxd"))
        except subprocess.CalledProcessError:
            pxd = ""
        for cls in classes:
            result[cls] = cython_members(source, cls, pxd)
    return result


def main(argv: list[str]) -> None:
    trt_repo, cupy_repo = argv
    out = {
        "about": "Names from the libraries' own binding sources; made by extract_gpu_api_names.py",
        "tensorrt": tensorrt(trt_repo),
        "polygraphy": polygraphy(trt_repo),
        "cupy": cupy(cupy_repo),
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
