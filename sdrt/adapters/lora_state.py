"""Run-time LoRA state of a Pipeline: loaded adapters, the active set, and the immutable
snapshot of branch feeds each call captures.

Each LoRA-ready module computes ``base(x) + (x @ down_t) @ up_t`` (export/adaptable.py), so

    sum_i weight_i * scale_i * (up_i @ down_i)

is fed as the active adapters' factors concatenated along the rank axis, each adapter's
``weight * scale`` folded into its up factor: a few MB, no base weight read (a kxk conv's
``down`` is fed as its conv weight [rank, in, kh, kw], ``--lora-ready all``). Modules no
active adapter touches are not fed (their zero-size defaults add exactly 0), and with no
active adapter nothing extra is fed. A change (load, set_adapters, unload) builds a new snapshot, then
swaps one reference: a call holds the snapshot it started with, so calls in flight keep
their adapters and never see a mix.

On engines that refit their weights in place (TensorRT, ``use_refit``) nothing is fed: a
change rewrites the touched base weights (lora_refit.py) while no call runs, behind a
WeightGate that each call holds shared from start to end (``shared``); the snapshot then
only names the adapters and keys the prompt cache.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from sdrt.adapters.lora_files import LoraFile
from sdrt.adapters.lora_match import MatchedModule, match_lora
from sdrt.adapters.lora_refit import RefitWeights
from sdrt.adapters.lora_sgm_blocks import (
    is_sgm_module,
    layers_per_block,
    map_sgm_blocks,
    uses_sgm_blocks,
)
from sdrt.adapters.weight_gate import WeightGate
from sdrt.errors import InputError, ModelFolderError
from sdrt.manifest import LoraBranch, Manifest

_EMPTY: Mapping = MappingProxyType({})
# Snapshots of recently active sets kept, so that switching back to one is a reference swap;
# each holds the concatenated factors (SD 1.5, two rank-16 adapters everywhere: ~15 MB).
RECENT_SNAPSHOTS = 2
UNET_CONFIG = "config.json"  # beside the U-Net's graph, as sdrt build writes it


@dataclass(frozen=True)
class WeightFeeds:
    """What one call feeds besides its inputs: component -> graph input -> array."""

    key: int | None = None  # None for the base weights; unique per snapshot otherwise
    adapters: tuple[tuple[str, float], ...] = ()  # (name, weight), as set_adapters set them
    feeds: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=lambda: _EMPTY)
    refitted: frozenset[str] = frozenset()  # components whose engines hold LoRA weights

    def of(self, component: str) -> Mapping[str, np.ndarray]:
        return self.feeds.get(component, _EMPTY)

    def key_of(self, component: str) -> int | None:
        """This snapshot's key where ``component`` computes other than the base (what its
        outputs are cached under), else None."""
        return self.key if component in self.feeds or component in self.refitted else None


BASE = WeightFeeds()


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: Path
    layout: str
    modules: tuple[MatchedModule, ...]


class LoraState:
    """Adapters of one Pipeline; changes are serialised, reads (``current``) lock-free."""

    def __init__(self, folder: Path, manifest: Manifest, recent: int = RECENT_SNAPSHOTS):
        self.folder = folder
        self.adaptable: dict[str, tuple[LoraBranch, ...]] = {
            name: c.lora_branches for name, c in manifest.components.items() if c.lora_branches
        }
        self.outdated = any(c.lora_outdated for c in manifest.components.values())
        self.manifest = manifest
        self._adapters: dict[str, LoadedAdapter] = {}
        self._lock = threading.Lock()
        self._keys = itertools.count(1)
        self.current: WeightFeeds = BASE
        self._recent: OrderedDict[tuple, WeightFeeds] = OrderedDict()
        self._recent_size = recent
        self.refit: RefitWeights | None = None
        self.gate = WeightGate()

    def use_refit(self, refit: RefitWeights) -> None:
        """Apply adapters by rewriting the engines' weights (before any adapter is loaded)."""
        with self._lock:
            if self.refit is None:
                self.refit = refit

    @contextmanager
    def shared(self, weights: WeightFeeds) -> Iterator[WeightFeeds]:
        """The adapters one call runs with, for as long as it runs: ``weights`` (captured when
        it was asked for) where they are fed; on refitted engines the gate, held shared, and
        the adapters the engines hold."""
        if self.refit is None:
            yield weights
            return
        with self.gate.shared():
            yield self.current

    @property
    def names(self) -> list[str]:
        return list(self._adapters)

    def adapters_by_component(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for adapter in self._adapters.values():
            for component in dict.fromkeys(m.component for m in adapter.modules):
                found.setdefault(component, []).append(adapter.name)
        return found

    def load(self, lora: LoraFile, adapter_name: str | None) -> str:
        """Add an adapter and make it the only active one (as diffusers does on load)."""
        if self.outdated:
            raise ModelFolderError(
                f"{self.folder}: this folder was built --lora-ready by an older sdrt (whole "
                "weights as inputs), which this one no longer feeds; rebuild it with "
                "`sdrt build --lora-ready` to load LoRAs at run time"
            )
        if not self.adaptable:
            raise ModelFolderError(
                f"{self.folder}: this folder was built without LoRA-ready weights; rebuild "
                "it with `sdrt build --lora-ready` to load LoRAs at "
                "run time, or fuse them at build time with `sdrt build --lora`"
            )
        lora = self._in_diffusers_layout(lora)
        modules = match_lora(lora, self.adaptable)  # InputError before anything changes
        with self._lock:
            name = adapter_name or f"default_{len(self._adapters)}"
            if name in self._adapters:
                raise InputError(
                    f"adapter name {name!r} is already in use (loaded: {self.names}); "
                    "pass another adapter_name or unload_lora_weights() first"
                )
            adapter = LoadedAdapter(name, lora.path, lora.layout, modules)
            adapters = {**self._adapters, name: adapter}
            if self.refit is not None:
                self._refit_to(adapters, ((name, 1.0),), "load_lora_weights")
            else:
                snapshot = self._snapshot(adapters, ((name, 1.0),))
                self._remember(snapshot)
                self.current = snapshot
            self._adapters[name] = adapter
        return name

    def _in_diffusers_layout(self, lora: LoraFile) -> LoraFile:
        """kohya SDXL files' SGM block names mapped as diffusers maps them: for SDXL only
        (diffusers' SD 1.x and 2.x pipelines fail on such files)."""
        if not uses_sgm_blocks(lora):
            return lora
        family = self.manifest.family
        if family != "sdxl":
            first = next(m.key for m in lora.modules if is_sgm_module(m))
            raise InputError(
                f"{lora.path}: its U-Net modules are named in the SGM/LDM layout (first: "
                f"{'lora_unet_' + first!r}), which diffusers (and sdrt) map only for SDXL "
                f"U-Nets; this folder is {family} (a LoRA for SDXL?)"
            )
        unet_folder = self.folder / Path(self.manifest.components["unet"].file).parent
        return map_sgm_blocks(lora, layers_per_block(unet_folder / UNET_CONFIG))

    def set_adapters(self, names: str | Sequence[str], weights=None) -> None:
        names = [names] if isinstance(names, str) else list(names)
        weights = _adapter_weights(names, weights)
        with self._lock:
            unknown = [n for n in names if n not in self._adapters]
            if unknown:
                raise InputError(f"set_adapters: unknown adapters {unknown}; loaded: {self.names}")
            active = tuple(zip(names, weights, strict=True))
            if self.refit is not None:
                self._refit_to(self._adapters, active, "set_adapters")
            else:
                self.current = self._cached_snapshot(active)

    def unload(self) -> None:
        with self._lock:
            if self.refit is not None:
                self._refit_to({}, (), "unload_lora_weights")
            self._adapters.clear()
            self._recent.clear()
            self.current = BASE

    def _refit_to(
        self, adapters: Mapping[str, LoadedAdapter], active: tuple[tuple[str, float], ...], what
    ) -> None:
        """Rewrite the engines' weights for ``active`` while no call runs; on failure the
        engines and ``current`` stay as they were."""
        touched = {
            component: {branch.module: tuple(terms) for branch, terms in branches.items()}
            for component, branches in self._touched(adapters, active).items()
        }
        with self.gate.exclusive(what):
            self.refit.apply(touched)
            key = next(self._keys) if touched else None
            self.current = WeightFeeds(key, active, refitted=frozenset(touched))

    def _cached_snapshot(self, active: tuple[tuple[str, float], ...]) -> WeightFeeds:
        """A recent snapshot of ``active`` (adapters never change once loaded), or a new one."""
        snapshot = self._recent.get(active)
        if snapshot is None:
            snapshot = self._snapshot(self._adapters, active)
        self._remember(snapshot)
        return snapshot

    def _remember(self, snapshot: WeightFeeds) -> None:
        self._recent[snapshot.adapters] = snapshot
        self._recent.move_to_end(snapshot.adapters)
        while len(self._recent) > self._recent_size:
            self._recent.popitem(last=False)

    @staticmethod
    def _touched(
        adapters: Mapping[str, LoadedAdapter], active: tuple[tuple[str, float], ...]
    ) -> dict[str, dict[LoraBranch, list]]:
        """component -> branch -> [(weight * scale, LoRA module)] of the active adapters."""
        touched: dict[str, dict[LoraBranch, list]] = {}
        for name, weight in active:
            if weight == 0.0:
                continue
            for m in adapters[name].modules:
                terms = touched.setdefault(m.component, {}).setdefault(m.branch, [])
                terms.append((weight * m.lora.scale, m.lora))
        return touched

    def _snapshot(
        self, adapters: Mapping[str, LoadedAdapter], active: tuple[tuple[str, float], ...]
    ) -> WeightFeeds:
        """New feeds for ``active``: per touched branch, the factors side by side."""
        feeds = {}
        for component, branches in self._touched(adapters, active).items():
            arrays = {}
            for branch, terms in branches.items():
                dtype = np.dtype(branch.dtype)
                if branch.spatial:  # the kxk conv weight [rank, in, kh, kw]
                    down = np.concatenate([lora.down for _, lora in terms], axis=0)
                    down_t = down.reshape(down.shape[0], -1, *branch.kernel)
                else:
                    down_t = np.concatenate([lora.down.T for _, lora in terms], axis=1)
                up_t = np.concatenate([factor * lora.up.T for factor, lora in terms], axis=0)
                for input_name, value in ((branch.down, down_t), (branch.up, up_t)):
                    value = np.ascontiguousarray(value, dtype=dtype)
                    value.flags.writeable = False
                    arrays[input_name] = value
            feeds[component] = MappingProxyType(arrays)
        if not feeds:
            return WeightFeeds(None, active)
        return WeightFeeds(next(self._keys), active, MappingProxyType(feeds))


def _adapter_weights(names: list[str], weights) -> list[float]:
    if weights is None:
        return [1.0] * len(names)
    if isinstance(weights, (int, float)) and not isinstance(weights, bool):
        return [float(weights)] * len(names)
    weights = list(weights)
    if len(weights) != len(names) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights
    ):
        raise InputError(
            f"set_adapters: expected adapter_weights as one number or {len(names)} numbers "
            f"(one per adapter {names}), got {weights!r}"
        )
    return [float(w) for w in weights]
