"""Run-time LoRA on engines that refit their weights in place (TensorRT).

The engines were built from the LoRA-ready graphs with their branches folded away
(sdrt/adapters/lora_fold.py), so each adapted module's base weight is a named engine weight.
A switch writes, for each module whose active adapters changed,

    W + sum_i weight_i * scale_i * (up_i @ down_i)

(computed on the host in fp32, from W as the folder's graph stores it), and writes W itself
back into modules no active adapter touches any more: after ``unload_lora_weights`` the
engines hold the base weights exactly. Modules whose adapters did not change are not
written. A switch that fails part-way puts back what it had already changed, so the engines
stay as they were.

Serialising the switches against the calls is lora_state.py's (a WeightGate): a refit changes
the weights every call sees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from sdrt.adapters.lora_files import LoraModule
from sdrt.adapters.lora_fold import WeightSlot, weight_slots
from sdrt.errors import BackendUnavailableError
from sdrt.manifest import Manifest

# module -> the active adapters' terms on it: (weight * scale, the adapter's module)
Terms = tuple[tuple[float, LoraModule], ...]
ModuleTerms = Mapping[str, Terms]


def delta_of(terms: Terms) -> np.ndarray:
    """sum of factor * up @ down, [out, in], in fp32."""
    total = None
    for factor, lora in terms:
        term = factor * (lora.up.astype(np.float32) @ lora.down.astype(np.float32))
        total = term if total is None else total + term
    return total


def _same(a: Terms | None, b: Terms | None) -> bool:
    a, b = a or (), b or ()
    return len(a) == len(b) and all(
        fa == fb and la is lb for (fa, la), (fb, lb) in zip(a, b, strict=True)
    )


class _BaseGraph:
    """A component's LoRA-ready graph without its weight bytes: the slots, and each base
    weight read from the folder on demand (not kept: a U-Net's are gigabytes)."""

    def __init__(self, path: Path, branches):
        try:
            import onnx
        except ImportError:
            raise BackendUnavailableError(
                "run-time LoRA on TensorRT reads the base weights from the folder's ONNX "
                "graphs with the onnx package: pip install onnx (in sdrt[gpu])"
            ) from None
        self.path = path
        model = onnx.load(str(path), load_external_data=False)
        self.slots: dict[str, WeightSlot] = weight_slots(model, branches)
        self._initializers = {t.name: t for t in model.graph.initializer}

    def base(self, name: str) -> np.ndarray:
        import onnx
        from onnx import numpy_helper

        tensor = onnx.TensorProto()
        tensor.CopyFrom(self._initializers[name])  # reading external data fills the copy
        return numpy_helper.to_array(tensor, base_dir=str(self.path.parent))


class RefitWeights:
    """What the engines' adaptable weights hold now, and how to change it."""

    def __init__(self, folder: Path, manifest: Manifest, session_of: Callable[[str], object]):
        self.folder = folder
        self._branches = {
            name: c.lora_branches for name, c in manifest.components.items() if c.lora_branches
        }
        self._files = {name: manifest.components[name].file for name in self._branches}
        self._session_of = session_of
        self._graphs: dict[str, _BaseGraph] = {}
        self._applied: dict[str, ModuleTerms] = {}

    def _graph(self, component: str) -> _BaseGraph:
        graph = self._graphs.get(component)
        if graph is None:
            graph = _BaseGraph(self.folder / self._files[component], self._branches[component])
            self._graphs[component] = graph
        return graph

    def apply(self, touched: Mapping[str, ModuleTerms]) -> None:
        """Make the engines compute ``touched`` (component -> module -> terms), every other
        adaptable module its base weight."""
        previous = dict(self._applied)
        done: list[tuple[str, list[str]]] = []
        try:
            for component in sorted(set(touched) | set(previous)):
                new, old = touched.get(component, {}), previous.get(component, {})
                changed = sorted(
                    m for m in set(new) | set(old) if not _same(new.get(m), old.get(m))
                )
                if changed:
                    self._refit(component, {m: new.get(m) for m in changed})
                    done.append((component, changed))
        except BaseException:
            for component, changed in reversed(done):  # put back what was changed
                old = previous.get(component, {})
                self._refit(component, {m: old.get(m) for m in changed})
            raise
        self._applied = {c: dict(t) for c, t in touched.items() if t}

    def _refit(self, component: str, modules: Mapping[str, Terms | None]) -> None:
        graph = self._graph(component)
        weights = {}
        for module, terms in modules.items():
            slot = graph.slots[module]
            base = graph.base(slot.initializer)
            weights[slot.initializer] = slot.with_delta(base, delta_of(terms) if terms else None)
        self._session_of(component).refit(weights, companions=graph.base)
