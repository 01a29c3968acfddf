"""Shared by the adopt tests: the committed Optimum export, copies of it, graph edits."""

from __future__ import annotations

import shutil
from pathlib import Path

OPTIMUM_TINY = Path(__file__).parent / "data" / "optimum_tiny"
# The tiny folder serves 64..256 px, as the tiny build of conftest.py does.
RANGE = ["--min-size", "64", "--max-size", "256"]


def copy_export(tmp_path: Path, name: str = "optimum") -> Path:
    folder = tmp_path / name
    shutil.copytree(OPTIMUM_TINY, folder)
    return folder


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: relative path -> (size, mtime in ns)."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def edit_graph(path: Path, edit, *, external_data: str | None = None) -> None:
    """Load an ONNX graph, ``edit(model)`` it in place, check and save it (optionally with
    its weights in one external data file, as old exports stored the U-Net)."""
    import onnx

    model = onnx.load(str(path))
    edit(model)
    onnx.checker.check_model(model)
    if external_data is None:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, location=external_data)


def poison_output(model, value: float = float("nan")) -> None:
    """Add ``value`` to the graph's first output (NaN: a graph that produces NaN)."""
    import numpy as np
    from onnx import helper, numpy_helper

    output = model.graph.output[0]
    inner = output.name + "_before_poison"
    for node in model.graph.node:  # the graph's own consumers keep the clean value
        node.output[:] = [inner if o == output.name else o for o in node.output]
        node.input[:] = [inner if i == output.name else i for i in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), "poison"))
    model.graph.node.append(helper.make_node("Add", [inner, "poison"], [output.name]))
