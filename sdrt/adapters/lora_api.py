"""diffusers' LoRA methods on sdrt.Pipeline (a mixin): load_lora_weights, set_adapters,
unload_lora_weights, get_active_adapters, with diffusers' names and meanings.

The state and its snapshots are in lora_state.py; this file checks arguments and how the
backend's sessions take adapters: as branch feeds (ort-cpu, and ort-cuda without CUDA graphs)
or by refitting their weights (TensorRT engines built with ``--refit``: lora_refit.py). It
leaves the Pipeline unchanged on any error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from sdrt.adapters.lora_files import lora_file_path, read_lora_file
from sdrt.adapters.lora_refit import RefitWeights
from sdrt.adapters.lora_state import LoraState, WeightFeeds
from sdrt.errors import BackendUnavailableError, InputError

REFIT_HINT = "rebuild its engines refittable: sdrt engines build FOLDER --refit"


class LoraMethods:
    """Needs ``self._lora`` (a LoraState) and ``self._session(name)``."""

    _lora: LoraState

    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike,
        weight_name: str | None = None,
        adapter_name: str | None = None,
    ) -> str:
        """Load a LoRA .safetensors file (diffusers/PEFT or kohya keys), or ``weight_name``
        in a folder, as adapter ``adapter_name`` (default ``default_N``) and make it the
        active one. Returns the adapter's name. Later calls use it; calls in flight do not."""
        if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
            raise InputError(
                "load_lora_weights: expected a .safetensors file or a folder holding one, got "
                "a state dict (in-memory tensors are not taken)"
            )
        path = lora_file_path(pretrained_model_name_or_path_or_dict, weight_name)
        lora = read_lora_file(path)
        components = sorted({m.component for m in lora.modules} & set(self._lora.adaptable))
        if any(self._takes_by_refit(c) for c in components):
            self._lora.use_refit(RefitWeights(self.folder, self.manifest, self._session))
        return self._lora.load(lora, adapter_name)

    def _takes_by_refit(self, component: str) -> bool:
        """Whether ``component``'s session takes adapters by refitting (else as feeds);
        BackendUnavailableError when it takes them neither way."""
        session = self._session(component)
        if getattr(session, "weight_inputs", None) is not None:
            return False
        if getattr(session, "refittable", False):
            return True
        if hasattr(session, "refittable"):
            raise BackendUnavailableError(
                f"backend {self.backend!r}: the {component} engine was not built refittable, so "
                f"it cannot take LoRA weights at run time; {REFIT_HINT}, or fuse the LoRA at "
                "build time (sdrt build --lora)"
            )
        raise BackendUnavailableError(
            f"backend {self.backend!r} does not take run-time LoRA weights ({component}); use "
            "backend='ort-cpu' (or 'ort-cuda' without cuda_graph), 'tensorrt' with engines "
            "built --refit, or fuse the LoRA at build time (sdrt build --lora)"
        )

    def set_adapters(self, adapter_names: str | Sequence[str], adapter_weights=None) -> None:
        """Make ``adapter_names`` the active adapters, each delta scaled by its weight
        (one number for all, or one per adapter; default 1.0), summed."""
        self._lora.set_adapters(adapter_names, adapter_weights)

    def unload_lora_weights(self) -> None:
        """Remove every adapter: later calls run on the base weights, exactly."""
        self._lora.unload()

    def get_active_adapters(self) -> list[str]:
        return [name for name, _ in self._lora.current.adapters]

    def get_list_adapters(self) -> dict[str, list[str]]:
        """Loaded adapters per component, as diffusers' ``get_list_adapters``."""
        return self._lora.adapters_by_component()

    @property
    def lora_weights(self) -> WeightFeeds:
        """The snapshot a call started now would use."""
        return self._lora.current
