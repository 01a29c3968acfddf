"""Shapes from symbolic dimension names: what the GPU sessions size their buffers by.

Graphs share dimension names across inputs and outputs ("batch", "latent_height"), and
shape inference writes output dimensions as arithmetic over them ("floor(2.0*h)").
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping

from sdrt.errors import InputError
from sdrt.manifest import TensorSpec

_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
}
_FUNCTIONS = {"floor": math.floor, "ceil": math.ceil}


def evaluate_dim(expression: str, sizes: Mapping[str, int]) -> int | None:
    """The size of a symbolic dimension such as "floor(2.0*latent_height)", or None.

    Shape inference writes output dimensions as arithmetic over input dimension names;
    only names, numbers, + - * / // and floor/ceil are evaluated, nothing else.
    """
    if expression in sizes:
        return sizes[expression]

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in sizes:
            return sizes[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and len(node.args) == 1
        ):
            return _FUNCTIONS[node.func.id](value(node.args[0]))
        raise ValueError(ast.dump(node))

    try:
        result = value(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None
    return int(result) if float(result).is_integer() else None


def named_sizes(
    specs: tuple[TensorSpec, ...], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, int]:
    """Each dimension name's size: the largest it has in ``shapes`` (1 broadcasts)."""
    sizes: dict[str, int] = {}
    for spec in specs:
        for dim, size in zip(spec.shape, shapes[spec.name], strict=True):
            if isinstance(dim, str):
                sizes[dim] = max(sizes.get(dim, 1), int(size))
    return sizes


def resolve_output_shapes(
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    shapes: Mapping[str, tuple[int, ...]],
) -> dict[str, tuple[int, ...]]:
    """Concrete output shapes from their symbolic dimensions over the inputs' names."""
    sizes = named_sizes(inputs, shapes)
    resolved = {}
    for spec in outputs:
        dims = [d if isinstance(d, int) else evaluate_dim(d, sizes) for d in spec.shape]
        unknown = [d for d, size in zip(spec.shape, dims, strict=True) if size is None]
        if unknown:
            raise InputError(
                f"output {spec.name!r} has dimensions {unknown} that are not known before "
                "running; CUDA graphs need them (run without cuda_graph)"
            )
        resolved[spec.name] = tuple(dims)
    return resolved


def broadcast_named_dims(
    specs: tuple[TensorSpec, ...], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Input shapes with size-1 axes widened to the size their dimension name has elsewhere.

    The shapes a graph with shared dimension names runs at, when an input is given with
    one value for a named axis (a timestep for the whole batch); other axes are unchanged.
    """
    sizes = named_sizes(specs, shapes)
    return {
        spec.name: tuple(
            sizes[dim] if isinstance(dim, str) and size == 1 else int(size)
            for dim, size in zip(spec.shape, shapes[spec.name], strict=True)
        )
        for spec in specs
    }
