"""Run-time LoRA on the tiny model against diffusers' load_lora_weights + set_adapters:
each file layout, two adapters with weights, unload, calls in flight while adapters switch,
and bad input that leaves the Pipeline as it was."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import numpy as np
import pytest
from lora_helpers import SCHEDULER, diffusers_images, peft_and_kohya_files, sdrt_images
from safetensors.numpy import save_file

import sdrt
from sdrt.errors import BackendUnavailableError, InputError, ModelFolderError

# Images against diffusers, in 0..1 (the 2/255).
IMAGE_TOLERANCE = 2 / 255
PROMPT = "a red fox in snow"
STEPS = 3


@pytest.fixture(scope="module")
def loras(tiny_source, tmp_path_factory):
    return peft_and_kohya_files(tmp_path_factory.mktemp("loras"), tiny_source)


@pytest.fixture(scope="module")
def latents():
    return np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)


@pytest.fixture
def pipe(tiny_built_lora_ready):
    return sdrt.Pipeline.load(tiny_built_lora_ready, backend="ort-cpu")


def _ours(pipe, latents, prompt=PROMPT):
    return sdrt_images(pipe, latents, prompt, STEPS)


@pytest.fixture(scope="module")
def references(tiny_source, loras, latents):
    """diffusers' images: base, each file alone, both with weights (0.6, 0.8)."""
    run = lambda files, **kw: diffusers_images(tiny_source, files, PROMPT, latents, STEPS, **kw)  # noqa: E731
    return {
        "base": run([]),
        "peft": run([(loras["peft"], "p")]),
        "kohya": run([(loras["kohya"], "k")]),
        "both": run([(loras["peft"], "p"), (loras["kohya"], "k")], adapter_weights=[0.6, 0.8]),
    }


def _close(ours, theirs) -> float:
    return float(np.abs(ours - theirs).max())


@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_each_layout_matches_diffusers(pipe, loras, latents, references, layout):
    base = _ours(pipe, latents)  # also fills the prompt cache with the base embeddings
    assert _close(base, references["base"]) <= IMAGE_TOLERANCE
    name = pipe.load_lora_weights(loras[layout], adapter_name=layout)
    assert name == layout and pipe.get_active_adapters() == [layout]
    image = _ours(pipe, latents)
    assert _close(image, references[layout]) <= IMAGE_TOLERANCE
    # The adapter changes the image far beyond the tolerance: the check can fail.
    assert _close(references[layout], references["base"]) > 3 * IMAGE_TOLERANCE


def test_two_adapters_with_weights_and_unload(pipe, loras, latents, references):
    base = _ours(pipe, latents)
    pipe.load_lora_weights(loras["peft"].parent, adapter_name="p")  # a folder: diffusers' file
    pipe.load_lora_weights(loras["kohya"], adapter_name="k")
    assert pipe.get_active_adapters() == ["k"]  # loading activates the new one, as diffusers
    pipe.set_adapters(["p", "k"], adapter_weights=[0.6, 0.8])
    assert pipe.get_active_adapters() == ["p", "k"]
    assert _close(_ours(pipe, latents), references["both"]) <= IMAGE_TOLERANCE
    assert pipe.get_list_adapters() == {"unet": ["p", "k"], "text_encoder": ["p", "k"]}
    pipe.unload_lora_weights()
    assert pipe.get_active_adapters() == []
    np.testing.assert_array_equal(_ours(pipe, latents), base)  # exactly the base image


def test_calls_in_flight_keep_their_adapters(pipe, loras, latents):
    pipe.load_lora_weights(loras["peft"], adapter_name="p")
    pipe.load_lora_weights(loras["kohya"], adapter_name="k")
    expected = {}
    for name in ("p", "k"):
        pipe.set_adapters(name)
        expected[name] = _ours(pipe, latents)
    request = pipe.request(
        PROMPT, num_inference_steps=STEPS, latents=latents, output_type="np", scheduler=SCHEDULER
    )
    pipe.set_adapters("p")
    steps = pipe.generate(request)
    next(steps)  # one step done with "p"
    pipe.set_adapters("k")
    result = [p.result for p in steps][-1]
    np.testing.assert_array_equal(result.images, expected["p"])

    # Threads generating while another one switches: each call gets its own adapters' image.
    start_lock, results, errors = threading.Lock(), [], []
    stop = threading.Event()

    def worker():
        try:
            for _ in range(3):
                with start_lock:  # read what is active and start the call at one instant
                    steps = pipe.generate(request)
                    active = tuple(pipe.get_active_adapters())
                results.append((active, [p.result for p in steps][-1].images))
        except Exception as e:  # reported below
            errors.append(e)

    def switcher():
        names = ["p", "k"]
        i = 0
        while not stop.is_set():
            with start_lock:
                pipe.set_adapters(names[i % 2])
            i += 1
            stop.wait(0.01)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    switching = threading.Thread(target=switcher)
    switching.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    switching.join()
    assert not errors
    assert len(results) == 9
    for active, images in results:
        np.testing.assert_array_equal(images, expected[active[0]])


def _unchanged(pipe, latents, before, active):
    assert pipe.get_active_adapters() == active
    np.testing.assert_array_equal(_ours(pipe, latents), before)


def test_bad_files_leave_the_pipeline_unchanged(pipe, loras, latents, tmp_path):
    pipe.load_lora_weights(loras["kohya"], adapter_name="k")
    before = _ours(pipe, latents)
    rank = 2
    down = np.ones((rank, 32), np.float32)
    up = np.ones((32, rank), np.float32)
    files = {
        "other_model": (
            {
                "unet.encoder.blocks.0.attn.qkv.lora_A.weight": down,
                "unet.encoder.blocks.0.attn.qkv.lora_B.weight": up,
            },
            r"none of its 1 modules matches this model.*another architecture",
        ),
        "shapes": (
            {
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": np.ones(
                    (rank, 48), np.float32
                ),
                "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": up,
            },
            r"shapes \(out, in\) that differ.*attn1\.to_q \(model \[32, 32\], file \[32, 48\]\)",
        ),
        "locon": (
            {
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": down.reshape(
                    rank, 32, 1, 1
                ),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": up.reshape(
                    32, rank, 1, 1
                ),
                "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": down.reshape(
                    rank, 32, 1, 1
                ),
                "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": up.reshape(
                    32, rank, 1, 1
                ),
            },
            r"1 of 2 modules match no module this folder takes at run time: "
            r"unet:down_blocks_0_resnets_0_conv1.*sdrt build --lora",
        ),
    }
    for name, (tensors, message) in files.items():
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        with pytest.raises(InputError, match=rf"{path}: .*{message}"):
            pipe.load_lora_weights(path, adapter_name=name)
        _unchanged(pipe, latents, before, ["k"])
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(InputError, match=r"corrupt\.safetensors: not a valid \.safetensors file"):
        pipe.load_lora_weights(tmp_path / "corrupt.safetensors")
    with pytest.raises(InputError, match=r"unknown adapters \['nope'\]; loaded: \['k'\]"):
        pipe.set_adapters(["k", "nope"])
    with pytest.raises(InputError, match="already in use"):
        pipe.load_lora_weights(loras["peft"], adapter_name="k")
    with pytest.raises(InputError, match=r"expected adapter_weights as one number or 1 numbers"):
        pipe.set_adapters(["k"], adapter_weights=[1.0, 2.0])
    _unchanged(pipe, latents, before, ["k"])


def test_folders_built_without_adaptable_weights(tiny_built, loras):
    """A folder built without --lora-ready (or before it existed) loads and runs as ever;
    run-time LoRA says to rebuild."""
    pipe = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")
    assert not any(c.lora_branches for c in pipe.manifest.components.values())
    with pytest.raises(
        ModelFolderError, match=r"built without LoRA-ready weights; rebuild.*--lora-ready"
    ):
        pipe.load_lora_weights(loras["peft"])
    assert pipe.get_active_adapters() == []
    assert pipe(PROMPT, num_inference_steps=1, output_type="np", seed=0).images.shape == (
        1,
        64,
        64,
        3,
    )


def test_folders_of_the_old_lora_ready_format_say_to_rebuild(tiny_built, loras, tmp_path):
    """sdrt.json of format 1 (whole weights as inputs): the folder runs, LoRA says rebuild."""
    folder = tmp_path / "old"
    shutil.copytree(tiny_built, folder)
    manifest = json.loads((folder / "sdrt.json").read_text())
    old = {"module": "m", "input": "unet.m.weight_t", "layout": "transposed", "shape": [4, 4]}
    manifest["components"]["unet"]["adaptable"] = [{**old, "dtype": "float32"}]
    (folder / "sdrt.json").write_text(json.dumps(manifest))
    pipe = sdrt.Pipeline.load(folder, backend="ort-cpu")
    with pytest.raises(
        ModelFolderError, match=r"older sdrt.*rebuild it with `sdrt build --lora-ready`"
    ):
        pipe.load_lora_weights(loras["peft"])
    assert pipe.get_active_adapters() == []


def test_weight_feeds_are_read_only_snapshots(pipe, loras):
    assert pipe.lora_weights.feeds == {}  # no adapter: nothing extra is fed
    pipe.load_lora_weights(loras["peft"], adapter_name="p")
    snapshot = pipe.lora_weights
    unet = snapshot.of("unet")
    assert unet and all(not v.flags.writeable for v in unet.values())
    branches = pipe.manifest.components["unet"].lora_branches
    manifest_inputs = {n for b in branches for n in (b.down, b.up)}
    assert set(unet) <= manifest_inputs
    pipe.set_adapters("p", 0.5)
    assert pipe.lora_weights is not snapshot and pipe.lora_weights.key != snapshot.key
    pipe.set_adapters("p")  # a recent set: its snapshot again, not a recomputation
    assert pipe.lora_weights is snapshot
    assert dataclasses.is_dataclass(snapshot)


class _SessionWithoutWeightFeeds:
    """A session taking only the graph's inputs (TensorRT's; ort-cuda's with a CUDA graph)."""

    def __init__(self, session):
        self.name, self.inputs, self.outputs = session.name, session.inputs, session.outputs
        self.run = session.run


def test_backends_without_weight_feeds_say_so(pipe, loras):
    pipe._sessions["unet"] = _SessionWithoutWeightFeeds(pipe._sessions["unet"])
    with pytest.raises(BackendUnavailableError, match=r"does not take run-time LoRA.*ort-cpu"):
        pipe.load_lora_weights(loras["peft"])
    with pytest.raises(InputError, match="got a state dict"):
        pipe.load_lora_weights({"unet.a.lora_A.weight": np.zeros((1, 1), np.float32)})
    assert pipe.get_active_adapters() == [] and pipe.lora_weights.feeds == {}
