"""A LoRA-ready graph seen as its base weights: where each branch's base weight lives, and
the graph with the branches taken out.

A ``--lora-ready`` export computes ``base(x) + (x @ down_t) @ up_t`` per adapted module
(export/adaptable.py). ONNX Runtime is fed the factors; a TensorRT engine is not (a rank axis
of any size, zero by default, is no profile TensorRT can build), so it is built from the graph
with the branches folded away, which is the base model exactly (the defaults add 0), and a
LoRA switch rewrites the base weights themselves by name (TensorRT's refit): ``W + sum of
weight * scale * up @ down``. What a switch needs to know per module is a ``WeightSlot``:
the initializer holding its base weight and how that weight is laid out.

The exported patterns, per branch (anything else is an error naming the module):

- Linear: ``Add(base, MatMul(MatMul(x, down_t), up_t))`` with ``base`` = ``MatMul(x, W_t)``
  or ``Add(MatMul(x, W_t), bias)``; ``W_t`` is [in, out] (the exporter stores W transposed);
  on a 2-D input (``--lora-ready all``: the time embedding) ``Gemm(x, W, bias)``, ``W``
  [out, in] with transB (else [in, out]);
- 1x1 Conv: ``Add(Conv(x, W, bias), Transpose(MatMul(MatMul(h, down_t), up_t)))`` with ``W``
  [out, in, 1, 1] (``h`` is x channels-last, however the exporter got there; what only the
  branch used goes with it);
- kxk Conv (``--lora-ready all``): ``Add(Conv(x, W, bias), Transpose(MatMul(Transpose(Conv(x,
  down)), up_t)))`` with ``W`` [out, in, kh, kw]; ``up @ down`` [out, in*kh*kw] reshaped is
  its delta, as peft merges a conv LoRA.

onnx is imported by the callers (engine builds, and the TensorRT backend's LoRA switch): it
is not a runtime dependency of the ONNX Runtime backends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdrt.errors import ModelFolderError
from sdrt.manifest import LoraBranch

# Bump when the folded graph or the slots change: the engines' cache key includes it.
FOLD_FORMAT = 1
MATMUL, CONV_1X1, CONV_KXK = "matmul_in_out", "conv_out_in_1x1", "conv_out_in_kh_kw"
GEMM_OUT_IN = "gemm_out_in"  # a Gemm with transB: W as torch stores it


@dataclass(frozen=True)
class WeightSlot:
    """Where a module's base weight lives in the graph, and its layout."""

    module: str
    initializer: str  # the ONNX initializer (and TensorRT weights) name
    # MATMUL: W transposed, [in, out]; GEMM_OUT_IN: [out, in]; CONV_1X1: [out, in, 1, 1];
    # CONV_KXK: [out, in, kh, kw]
    layout: str

    def with_delta(self, base: np.ndarray, delta: np.ndarray | None) -> np.ndarray:
        """``base`` (in this slot's layout) plus ``delta`` [out, in], summed in fp32; with no
        delta, ``base`` itself (an unload writes back exactly what the graph stores)."""
        if delta is None:
            return base
        base = base.astype(np.float32, copy=False)
        if self.layout == MATMUL:
            return base + delta.T
        return base + delta.reshape(base.shape)  # [out, in(*kh*kw)] -> [out, in, kh, kw]


@dataclass(frozen=True)
class _Branch:
    slot: WeightSlot
    add: object  # the Add node joining base and branch
    base_output: str  # the base's output, which replaces the Add's
    nodes: tuple  # the branch's own nodes (removed by the fold)


def _index(graph):
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers


def _only(nodes: list, op_type: str, where: str):
    if len(nodes) != 1 or nodes[0].op_type != op_type:
        found = [n.op_type for n in nodes]
        raise ModelFolderError(f"{where}: expected one {op_type} node, found {found}")
    return nodes[0]


def _find_branch(graph, branch: LoraBranch, producers, consumers, initializers) -> _Branch:
    where = f"LoRA branch of {branch.module}"
    if branch.spatial:  # Conv(x, down) -> Transpose -> MatMul(up_t)
        first = _only(consumers.get(branch.down, []), "Conv", where)
        turn = _only(consumers.get(first.output[0], []), "Transpose", where)
        second = _only(consumers.get(turn.output[0], []), "MatMul", where)
        nodes = [first, turn, second]
    else:
        first = _only(consumers.get(branch.down, []), "MatMul", where)
        second = _only(consumers.get(first.output[0], []), "MatMul", where)
        nodes = [first, second]
    if branch.up not in second.input:
        raise ModelFolderError(f"{where}: the second MatMul does not take {branch.up}")
    joined = consumers.get(second.output[0], [])
    conv = len(joined) == 1 and joined[0].op_type == "Transpose"
    if conv:
        nodes.append(joined[0])
        joined = consumers.get(joined[0].output[0], [])
    add = _only(joined, "Add", where)
    branch_output = nodes[-1].output[0]
    base_output = next((i for i in add.input if i != branch_output), None)
    base = producers.get(base_output)
    if base is not None and base.op_type == "Add" and not conv:
        base = producers.get(next((i for i in base.input if i not in initializers), ""))
    expected = ("Conv",) if conv else ("MatMul", "Gemm")
    if base is None or base.op_type not in expected or base.input[1] not in initializers:
        raise ModelFolderError(
            f"{where}: its base is not a {' or '.join(expected)} with a constant weight "
            f"({base.op_type if base is not None else 'a graph input'})"
        )
    weight = initializers[base.input[1]]
    layout = (CONV_KXK if branch.spatial else CONV_1X1) if conv else MATMUL
    if branch.spatial:
        want = [branch.features_out, *branch.down_shape[1:]]
    elif conv:
        want = [branch.features_out, branch.features_in, 1, 1]
    elif base.op_type == "Gemm":
        layout = _gemm_layout(base, where)
        want = [branch.features_in, branch.features_out]
        if layout == GEMM_OUT_IN:
            want.reverse()
    else:
        want = [branch.features_in, branch.features_out]
    if list(weight.dims) != want:
        raise ModelFolderError(
            f"{where}: its base weight {weight.name} has shape {list(weight.dims)}; {want} expected"
        )
    users = consumers.get(weight.name, [])
    if len(users) != 1:
        raise ModelFolderError(
            f"{where}: its base weight {weight.name} is shared by {len(users)} nodes; a refit "
            "would change them all"
        )
    slot = WeightSlot(branch.module, weight.name, layout)
    return _Branch(slot, add, base_output, tuple(nodes))


def _gemm_layout(gemm, where: str) -> str:
    """A Linear on a 2-D input (the time embedding's, time_emb_proj) exports as Gemm:
    ``x @ W.T + b`` with transB=1 ([out, in], as torch stores it), or ``x @ W + b``."""
    import onnx

    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gemm.attribute}
    if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0:
        raise ModelFolderError(f"{where}: its base Gemm has transA or alpha; not a Linear")
    return GEMM_OUT_IN if attributes.get("transB", 0) else MATMUL


def _branches(model, branches: Iterable[LoraBranch]) -> list[_Branch]:
    graph = model.graph
    producers, consumers = _index(graph)
    initializers = {t.name: t for t in graph.initializer}
    return [_find_branch(graph, b, producers, consumers, initializers) for b in branches]


def weight_slots(model, branches: Iterable[LoraBranch]) -> dict[str, WeightSlot]:
    """Module name -> its base weight's slot, for a LoRA-ready ``model`` (onnx.ModelProto,
    weights not needed)."""
    return {found.slot.module: found.slot for found in _branches(model, branches)}


def fold_branches(model, branches: tuple[LoraBranch, ...]) -> None:
    """Take the branches out of ``model`` (in place): each Add's users read the base instead,
    the branch nodes and the factor inputs and defaults go."""
    found = _branches(model, branches)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    renamed = {}
    for b in found:
        if b.add.output[0] in outputs:  # conv_out's sum: the base now writes the output
            renamed[b.base_output] = b.add.output[0]
            for node in graph.node:
                node.output[:] = [b.add.output[0] if o == b.base_output else o for o in node.output]
        else:
            renamed[b.add.output[0]] = b.base_output
    dropped = {id(n) for b in found for n in (*b.nodes, b.add)}
    kept = [n for n in graph.node if id(n) not in dropped]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    kept = _live(kept, outputs)
    gone_nodes = [n for n in graph.node if all(n is not k for k in kept)]
    del graph.node[:]
    graph.node.extend(kept)
    factors = {name for b in branches for name in (b.down, b.up)}
    gone = factors | {o for n in gone_nodes for o in n.output}
    for field in (graph.input, graph.initializer, graph.value_info):
        remaining = [v for v in field if v.name not in gone]
        del field[:]
        field.extend(remaining)


def _live(nodes: list, outputs: set[str]) -> list:
    """``nodes`` less those whose outputs nothing reads (the branches' own reshapes)."""
    while True:
        read = outputs | {name for n in nodes for name in n.input}
        live = [n for n in nodes if any(o in read for o in n.output)]
        if len(live) == len(nodes):
            return live
        nodes = live


def write_folded_copy(onnx_path: Path, branches: tuple[LoraBranch, ...]) -> Path:
    """The graph at ``onnx_path`` with its branches folded, written beside it (so that its
    external data, if any, is read from the original's files, not copied); the caller
    deletes it."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    fold_branches(model, branches)
    target = onnx_path.with_name(f".folded-{onnx_path.name}")
    onnx.save_model(model, str(target))
    return target
