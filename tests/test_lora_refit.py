"""Run-time LoRA on TensorRT by refitting (sdrt/adapters/lora_refit.py), on the CPU.

The engines are the fakes of tests/gpu_fakes.py driven through sdrt's real TensorRTSession
and its refit path (names, sizes, types, companions, the stream), but they compute with ONNX
Runtime: each runs the tiny LoRA-ready folder's graph with its branches folded away (what
`sdrt engines build` gives TensorRT), with its named weights as they are now. So the images
show what the refits wrote: against the ONNX Runtime path fed the same adapters, against
diffusers, the base image exactly after unload, each call keeping the adapters it started
with while another thread switches, and failures that leave the engines as they were.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gpu_fakes import (
    FakeEngine,
    use_fake_tensorrt,
)
from lora_helpers import diffusers_images, peft_and_kohya_files, sdrt_images
from onnx import numpy_helper

import sdrt
from sdrt.adapters.lora_fold import fold_branches, weight_slots
from sdrt.errors import BackendUnavailableError, InputError

# The refitted engines against ONNX Runtime fed the same factors: the same sums in another
# order (W + up @ down against x @ W + (x @ down) @ up), in fp32.
REFIT_VS_FEEDS = 1e-4
IMAGE_TOLERANCE = 2 / 255  # against diffusers, as the issue asks
PROMPT = "a red fox in snow"
STEPS = 3
ADAPTED = ("unet", "text_encoder")
# The fake engines' profiles (min, opt, max) on named axes (the engine's output shapes are
# found at the max, so it stays small); the sequence is CLIP's 77 tokens.
PROFILE = {"sequence": (77, 77, 77)}
OTHER_AXES = (1, 2, 16)


class OnnxEngine(FakeEngine):
    """A refittable fake engine computing a folded graph with ONNX Runtime, its adaptable
    weights named as the graph's initializers, and one bias, which it wants refitted with its
    weight (as TensorRT may when it fuses them)."""

    def __init__(self, model: onnx.ModelProto, component, slots, refittable=True):
        self.model = model
        initializers = {t.name: t for t in model.graph.initializer}
        names = [s.initializer for s in slots.values()]
        # the first adapted module with a bias: TensorRT may fuse it into the kernel
        module = next(
            m for m in sorted(slots) if any(n.endswith(f"{m}.base.bias") for n in initializers)
        )
        bias = next(n for n in initializers if n.endswith(f"{module}.base.bias"))
        weights = {n: numpy_helper.to_array(initializers[n]) for n in (*names, bias)}
        self.outputs = [spec.name for spec in component.outputs]
        self._sessions: dict[str, ort.InferenceSession] = {}
        tensors = {}
        for spec in component.inputs:
            low, mid, high = (
                tuple(
                    d if isinstance(d, int) else PROFILE.get(d, OTHER_AXES)[i] for d in spec.shape
                )
                for i in range(3)
            )
            tensors[spec.name] = ("input", np.dtype(spec.dtype), (low, mid, high))
        for spec in component.outputs:
            tensors[spec.name] = ("output", np.dtype(spec.dtype), self._shape_of(spec.name))
        super().__init__(tensors, self._compute, weights=weights, refittable=refittable)
        self._refit_groups.append({slots[module].initializer, bias})
        self.input_names = [spec.name for spec in component.inputs]

    def _session(self, weights) -> ort.InferenceSession:
        digest = hashlib.sha1()
        for name in sorted(weights):
            digest.update(np.ascontiguousarray(weights[name]).tobytes())
        key = digest.hexdigest()
        if key not in self._sessions:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            for tensor in model.graph.initializer:
                if tensor.name in weights:
                    value = np.asarray(weights[tensor.name]).reshape(tuple(tensor.dims))
                    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
            self._sessions = {key: ort.InferenceSession(model.SerializeToString())}
        return self._sessions[key]

    def _compute(self, values):
        weights = {n: values[n] for n in self._weights}
        feeds = {n: values[n] for n in self.input_names}
        return dict(zip(self.outputs, self._session(weights).run(self.outputs, feeds), strict=True))

    def _shape_of(self, output):
        def shape(input_shapes):
            feeds = {n: np.zeros(input_shapes[n], self._tensors[n][1]) for n in self.input_names}
            weights = {n: w.view(np.ndarray) for n, w in self._weights.items()}
            results = self._session(weights).run([output], feeds)
            return results[0].shape

        return shape


class HostSession:
    """A TensorRTSession whose outputs come back to the host, so that the loop runs on numpy."""

    weight_inputs = None

    def __init__(self, session):
        self._session = session
        self.name, self.inputs, self.outputs = session.name, session.inputs, session.outputs
        self.refits: list[list[str]] = []

    @property
    def refittable(self):
        return self._session.refittable

    def refit(self, weights, companions=None):
        self.refits.append(sorted(weights))
        return self._session.refit(weights, companions)

    def run(self, feeds):
        return {n: v.get() for n, v in self._session.run(feeds).items()}


@pytest.fixture
def fakes(monkeypatch):
    use_fake_tensorrt(monkeypatch)


def trt_pipeline(folder, refittable=True) -> sdrt.Pipeline:
    """The folder's Pipeline with its U-Net and text encoder on fake refittable engines."""
    from sdrt.backends.tensorrt import TensorRTSession

    pipe = sdrt.Pipeline.load(folder, backend="ort-cpu")
    for name in ADAPTED:
        component = pipe.manifest.components[name]
        model = onnx.load(str(folder / component.file))
        slots = weight_slots(model, component.lora_branches)
        fold_branches(model, component.lora_branches)
        engine = OnnxEngine(model, component, slots, refittable=refittable)
        session = TensorRTSession(name, engine, component.inputs, component.outputs)
        pipe._sessions[name] = HostSession(session)
        for encoder in pipe.prompt_encoders:
            if encoder.session.name == name:
                encoder.session = pipe._sessions[name]
    return pipe


def image(pipe, latents, **kw):
    return sdrt_images(pipe, latents, PROMPT, STEPS, **kw)


@pytest.fixture(scope="module")
def loras(tiny_source, tmp_path_factory):
    return peft_and_kohya_files(tmp_path_factory.mktemp("refit-loras"), tiny_source)


@pytest.fixture(scope="module")
def latents():
    return np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def fed(tiny_built_lora_ready, loras, latents):
    """ONNX Runtime's images, the adapters fed: base, each file, both at (0.6, 0.8)."""
    pipe = sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu")
    images = {"base": image(pipe, latents)}
    pipe.load_lora_weights(loras["peft"], adapter_name="peft")
    images["peft"] = image(pipe, latents)
    pipe.load_lora_weights(loras["kohya"], adapter_name="kohya")
    images["kohya"] = image(pipe, latents)
    pipe.set_adapters(["peft", "kohya"], [0.6, 0.8])
    images["both"] = image(pipe, latents)
    return images


def test_refits_give_the_images_of_the_fed_adapters_and_unload_gives_the_base_exactly(
    fakes, tiny_built_lora_ready, loras, latents, fed
):
    pipe = trt_pipeline(tiny_built_lora_ready)
    base = image(pipe, latents)
    np.testing.assert_array_equal(base, fed["base"])  # the folded graph is the base exactly
    pipe.load_lora_weights(loras["peft"], adapter_name="peft")
    np.testing.assert_allclose(image(pipe, latents), fed["peft"], atol=REFIT_VS_FEEDS)
    pipe.load_lora_weights(loras["kohya"], adapter_name="kohya")  # now the only active one
    np.testing.assert_allclose(image(pipe, latents), fed["kohya"], atol=REFIT_VS_FEEDS)
    pipe.set_adapters(["peft", "kohya"], [0.6, 0.8])
    np.testing.assert_allclose(image(pipe, latents), fed["both"], atol=REFIT_VS_FEEDS)
    assert pipe.get_active_adapters() == ["peft", "kohya"]
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(image(pipe, latents), base)
    assert pipe.get_active_adapters() == []


def test_refitted_images_match_diffusers(fakes, tiny_built_lora_ready, tiny_source, loras, latents):
    pipe = trt_pipeline(tiny_built_lora_ready)
    pipe.load_lora_weights(loras["peft"], adapter_name="peft")
    pipe.load_lora_weights(loras["kohya"], adapter_name="kohya")
    pipe.set_adapters(["peft", "kohya"], [0.6, 0.8])
    files = [(loras["peft"], "peft"), (loras["kohya"], "kohya")]
    reference = diffusers_images(
        tiny_source, files, PROMPT, latents, STEPS, adapter_weights=[0.6, 0.8]
    )
    np.testing.assert_allclose(image(pipe, latents), reference, atol=IMAGE_TOLERANCE)


def test_a_switch_writes_only_the_modules_whose_adapters_changed(
    fakes, tiny_built_lora_ready, loras
):
    pipe = trt_pipeline(tiny_built_lora_ready)
    unet = pipe._sessions["unet"]
    pipe.load_lora_weights(loras["peft"], adapter_name="peft")
    branches = pipe.manifest.components["unet"].lora_branches
    touched = {
        m.branch.module for m in pipe._lora._adapters["peft"].modules if m.component == "unet"
    }
    assert len(unet.refits) == 1 and len(unet.refits[0]) == len(touched) <= len(branches)
    pipe.set_adapters("peft", 1.0)  # what the engines hold already
    assert len(unet.refits) == 1
    pipe.set_adapters("peft", 0.5)
    assert len(unet.refits) == 2 and unet.refits[1] == unet.refits[0]


def test_engines_not_built_refittable_are_refused_and_the_pipeline_is_unchanged(
    fakes, tiny_built_lora_ready, loras, latents
):
    pipe = trt_pipeline(tiny_built_lora_ready, refittable=False)
    with pytest.raises(BackendUnavailableError, match=r"not built refittable.*--refit"):
        pipe.load_lora_weights(loras["peft"])
    assert pipe.get_list_adapters() == {} and pipe._lora.refit is None


def test_a_refit_failing_part_way_puts_back_what_it_had_changed(
    fakes, tiny_built_lora_ready, loras, latents, monkeypatch
):
    pipe = trt_pipeline(tiny_built_lora_ready)
    pipe.load_lora_weights(loras["peft"], adapter_name="peft")
    before = image(pipe, latents)
    text, unet = pipe._sessions["text_encoder"], pipe._sessions["unet"]
    real = unet.refit
    calls = []

    def failing(weights, companions=None):
        calls.append(len(weights))
        if len(calls) == 1:
            raise RuntimeError("unet: TensorRT failed to refit the engine")
        return real(weights, companions)

    monkeypatch.setattr(unet, "refit", failing)
    with pytest.raises(RuntimeError, match="failed to refit"):
        pipe.load_lora_weights(loras["kohya"], adapter_name="kohya")
    # text_encoder comes first (sorted): it was refitted, then put back
    assert len(text.refits) == 3
    assert pipe.get_active_adapters() == ["peft"] and pipe.get_list_adapters() == {
        "unet": ["peft"],
        "text_encoder": ["peft"],
    }
    np.testing.assert_array_equal(image(pipe, latents), before)


def test_a_call_in_flight_keeps_its_adapters_and_a_switch_waits_for_it(
    fakes, tiny_built_lora_ready, loras, latents, fed
):
    pipe = trt_pipeline(tiny_built_lora_ready)
    pipe.load_lora_weights(loras["peft"], adapter_name="peft")
    pipe.load_lora_weights(loras["kohya"], adapter_name="kohya")
    pipe.set_adapters("peft")
    first_step, release = threading.Event(), threading.Event()
    results = {}

    def on_step(progress):
        first_step.set()
        release.wait(30)

    def call():
        results["in flight"] = image(pipe, latents, callback=on_step)

    caller = threading.Thread(target=call)
    caller.start()
    assert first_step.wait(60)
    switch = threading.Thread(target=pipe.set_adapters, args=("kohya",))
    switch.start()
    switch.join(0.5)
    assert switch.is_alive()  # waits for the call in flight
    assert pipe.get_active_adapters() == ["peft"]
    release.set()
    caller.join(60)
    switch.join(60)
    np.testing.assert_allclose(results["in flight"], fed["peft"], atol=REFIT_VS_FEEDS)
    assert pipe.get_active_adapters() == ["kohya"]
    np.testing.assert_allclose(image(pipe, latents), fed["kohya"], atol=REFIT_VS_FEEDS)


def test_switching_from_inside_a_call_is_refused(fakes, tiny_built_lora_ready, loras, latents):
    pipe = trt_pipeline(tiny_built_lora_ready)
    pipe.load_lora_weights(loras["peft"], adapter_name="peft")
    errors = []

    def on_step(progress):
        try:
            pipe.set_adapters("peft", 0.5)
        except InputError as e:
            errors.append(str(e))

    image(pipe, latents, callback=on_step)
    assert errors and "from inside a call" in errors[0]
    assert pipe._lora.current.adapters == (("peft", 1.0),)
