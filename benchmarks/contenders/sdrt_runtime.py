"""sdrt's own runtime on one of its backends (``ort-cpu``, ...), through the public API.

Stages are timed by the pipeline's public stage hook (``stage_callback``, sdrt/stages.py),
named as the other contenders name them. The prompt-embedding cache is turned off so that every run encodes its prompts,
as the other contenders do: the same work for everyone.
Run as ``python -m sdrt.benchmarks.contenders.sdrt_runtime MODEL_DIR THREADS BACKEND
[--no-saved-graphs | --call-options JSON]``; with the flag, the ONNX Runtime backends load
without the optimised graphs saved under ``engines/<target>/`` and optimise every graph in
memory at load, as Optimum does (``OrtOptions(cache_optimized_model=False)``); with
``--call-options`` every call also gets those keyword arguments (a fast mode's, such as
``deep_cache_interval``: benchmarks/fast_modes.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sdrt.benchmarks.contenders.protocol import StageClock, Workload, serve, version_of

# sdrt stage -> benchmark stage (the other contenders time the same three models)
STAGES = {
    "text_encoder": "text_encoder",
    "text_encoder_2": "text_encoder",
    "unet": "unet",
    "vae_decode": "vae_decode",
}
# The graphs whose saved optimised copies make a load fast.
TIMED_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
# Pipeline.load's default: hash the graphs that changed since they last matched sdrt.json
# (sdrt.integrity; the report says whether a record of earlier hashes was there).
VERIFY_FILES = "changed"
SDRT_SOURCE_DIR = str(Path(__file__).resolve().parents[2] / "sdrt")
NO_SAVED_GRAPHS = "--no-saved-graphs"
CALL_OPTIONS = "--call-options"
# Backends whose loads map optimised graphs saved in the folder (OrtOptions).
SAVES_GRAPHS = ("ort-cpu", "ort-cuda")


class SdrtRuntime:
    name = "sdrt"
    runtime_distributions = ("sdrt",)  # its run-time requirements, not the extras
    runtime_source_dirs = (SDRT_SOURCE_DIR,)

    def __init__(
        self, backend: str, saved_graphs: bool = True, call_options: dict[str, Any] | None = None
    ):
        self.backend = backend
        if backend == "openvino":  # its extra is part of what that contender installs
            self.runtime_distributions = ("sdrt", "openvino")
        self.saved_graphs = saved_graphs
        self.call_options = dict(call_options or {})
        self.pipe: Any = None
        self.clock = StageClock()
        self.threads = 0
        self.optimized_model_cached = False
        self.hashes_recorded = False

    def import_runtime(self) -> None:
        import sdrt.pipeline  # noqa: F401 -- the runtime and onnxruntime

    def load(self, model_dir: str, threads: int) -> None:
        import sdrt
        from sdrt.backends.ort_cpu_options import OrtOptions, optimized_model_path
        from sdrt.integrity import RECORD_NAME
        from sdrt.manifest import read_manifest

        self.threads = threads
        options = OrtOptions(intra_op_threads=threads, cache_optimized_model=self.saved_graphs)
        # sdrt saves an optimised copy of each graph on first load; say whether this load had it.
        manifest = read_manifest(model_dir)
        self.optimized_model_cached = all(
            optimized_model_path(Path(model_dir), manifest.components[name], options).is_file()
            for name in TIMED_COMPONENTS
            if name in manifest.components
        )
        self.hashes_recorded = (Path(model_dir) / RECORD_NAME).is_file()
        self.pipe = sdrt.Pipeline.load(
            model_dir,
            backend=self.backend,
            prompt_cache_size=0,
            ort_options=options,
            backend_options=_thread_options(self.backend, threads),
            verify_files=VERIFY_FILES,
        )

    def load_settings(self) -> dict[str, Any]:
        if self.backend not in SAVES_GRAPHS:
            graphs = f"none: {self.backend} compiles the graphs at load"
        elif not self.saved_graphs:
            graphs = "not used: every graph optimised in memory at load"
        elif self.optimized_model_cached:
            graphs = "used: mapped the optimised graphs saved in the folder"
        else:
            graphs = "made: this load optimised the graphs and saved them"
        return {
            "backend": self.backend,
            "saved_optimised_graphs": graphs,
            "cache_optimized_model": self.saved_graphs,
            "verify_files": VERIFY_FILES,
            "file_hashes_recorded_before_load": self.hashes_recorded,
        }

    def generate(self, workload: Workload, latents: Any, clock: StageClock) -> Any:
        self.clock = clock
        result = self.pipe(
            **workload.call_arguments(),
            latents=latents,
            seed=0,
            scheduler=workload.scheduler,
            output_type="np",
            stage_callback=self._record,
            **self.call_options,
        )
        return result.images

    def _record(self, timing: Any) -> None:
        stage = STAGES.get(timing.stage)
        if stage is not None:
            self.clock.durations.setdefault(stage, []).append(timing.seconds)

    def settings(self, workload: Workload) -> dict[str, Any]:
        return {
            "scheduler": workload.scheduler,
            "backend": self.backend,
            "threads": self.threads,
            "prompt_cache": 0,
            "saved_graphs": self.saved_graphs,
            "optimized_model_cached_before_load": self.optimized_model_cached,
            **self._unet_graph(),
            "call_options": self.call_options,
            "verify_files": VERIFY_FILES,
            "file_hashes_recorded_before_load": self.hashes_recorded,
        }

    def _unet_graph(self) -> dict[str, Any]:
        """The U-Net's precision and the file its session compiled (openvino runs a folder's
        OpenVINO IR, where it has one, instead of the ONNX graph)."""
        unet = self.pipe.manifest.components["unet"]
        graph = getattr(self.pipe.session("unet"), "graph", unet.file)
        ir = unet.openvino
        precision = ir.precision if ir is not None and graph == ir.file else unet.precision
        return {"unet_precision": precision, "unet_graph": graph}

    def versions(self) -> dict[str, str]:
        names = ("sdrt", "onnxruntime", "numpy", "tokenizers")
        if self.backend == "openvino":
            names += ("openvino",)
        return {name: version_of(name) for name in names}


def _thread_options(backend: str, threads: int) -> Any:
    """The options that give a backend other than ONNX Runtime's the contender's threads
    (ONNX Runtime's come as ``ort_options``); None for the backend's defaults."""
    if backend == "openvino":
        from sdrt.backends.openvino import OpenVinoOptions

        return OpenVinoOptions(threads=threads)
    return None


def _runtime(arguments: list[str]) -> SdrtRuntime:
    import json

    backend, *flags = arguments
    if flags == [NO_SAVED_GRAPHS]:
        return SdrtRuntime(backend, saved_graphs=False)
    if len(flags) == 2 and flags[0] == CALL_OPTIONS:
        return SdrtRuntime(backend, call_options=json.loads(flags[1]))
    if flags:
        sys.exit(
            f"expected MODEL_DIR THREADS BACKEND [{NO_SAVED_GRAPHS} | {CALL_OPTIONS} JSON], "
            f"got {sys.argv[1:]}"
        )
    return SdrtRuntime(backend)


if __name__ == "__main__":
    sys.exit(serve(_runtime(sys.argv[3:]), sys.argv[1:3]))
