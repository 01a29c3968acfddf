"""The TensorRT backend, builder, verifier and environment probe on the CPU, against fake
``tensorrt``, ``polygraphy`` and ``cupy`` modules (tests/gpu_fakes.py) put into sys.modules.

These are the parts that used to run only in the always-skipped gpu tests:
``TensorRTBackend.open_sessions`` (verified fp16 engines, one shared activation block, the
VAE decoder NaN-guarded with its fp32 engine as the fallback), ``_fp32_fallback``,
``TensorRTSession.load``, ``TensorRTBuilder`` (what it asks of Polygraphy on TensorRT 10 and
11), ``TensorRTVerifier`` (the engine against ONNX Runtime on the CPU) and
``detect_environment``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from engine_helpers import make_folder
from gpu_fakes import (
    GPU,
    FakeEngine,
    FakePolygraphy,
    FakeRuntime,
    FakeTrtRuntime,
    fake_cupy,
    fake_tensorrt,
    install,
    plan_bytes,
    unet_like_engine,
)
from onnx import TensorProto, helper
from sdrt.engines.compare import FP16, FP32
from sdrt.engines.profiles import ShapeRange
from sdrt.engines.tensorrt import (
    BuildRequest,
    TensorRTBuilder,
    TensorRTBuildOptions,
    TensorRTVerifier,
    build_engines,
    detect_environment,
)
from test_engines_build import ENV, FakeVerifier

from sdrt.backends.engine_key import BuildEnvironment
from sdrt.backends.machine import Machine
from sdrt.errors import BackendUnavailableError, ModelFolderError, SdrtError
from sdrt.manifest import Component, TensorSpec, read_manifest

MACHINE = Machine("10.3.0", "14.2.0", 1, ("CPUExecutionProvider",), "8.9", "NVIDIA L4")


@pytest.fixture
def fakes(monkeypatch):
    install(monkeypatch, cupy=fake_cupy(), tensorrt=fake_tensorrt())
    import sdrt.backends.tensorrt as backend

    monkeypatch.setattr(backend, "_runtime", None)
    monkeypatch.setattr(FakeRuntime, "_devices", 1)
    GPU.reset()
    FakeTrtRuntime._plans.clear()
    FakeTrtRuntime._deserialized.clear()


# ---------------------------------------------------------------------------- detect_environment


def test_detect_environment_reads_tensorrt_and_device_0(fakes):
    assert detect_environment() == BuildEnvironment("tensorrt", "10.3.0", "9.0", "NVIDIA H200")


def test_detect_environment_says_what_is_missing(fakes, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt: ImportError
    with pytest.raises(BackendUnavailableError, match="TensorRT engines need tensorrt \\("):
        detect_environment()
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendUnavailableError, match="need tensorrt and cupy"):
        detect_environment()
    install(monkeypatch, tensorrt=fake_tensorrt(), cupy=fake_cupy())
    monkeypatch.setattr(FakeRuntime, "_devices", 0)
    with pytest.raises(BackendUnavailableError, match="need a CUDA device \\(cupy sees none\\)"):
        detect_environment()


# ---------------------------------------------------------------------------- a built folder


def engine_for(component: Component, record, dtype):
    """A fake engine with the component's I/O and the record's profile, computing in dtype:
    unet: out_sample = 2 * sample + timestep; vae_decoder: sample = 2 * latents[:, :3],
    each latent 8x8 pixels; text_encoder: zeros."""
    profile = {
        n: tuple(tuple(levels[k]) for k in ("min", "opt", "max"))
        for n, levels in record.profile.items()
    }
    tensors = {s.name: ("input", np.dtype(s.dtype), profile[s.name]) for s in component.inputs}
    if component.name == "vae_decoder":
        tensors["sample"] = (
            "output",
            np.float32,
            lambda s: (
                s["latent_sample"][0],
                3,
                8 * s["latent_sample"][2],
                8 * s["latent_sample"][3],
            ),
        )

        def compute(v):
            x = 2 * v["latent_sample"][:, :3].astype(dtype)
            return {"sample": x.repeat(8, axis=2).repeat(8, axis=3).astype(np.float32)}

    elif component.name == "unet":
        tensors["out_sample"] = ("output", np.float32, lambda s: s["sample"])

        def compute(v):
            t = v["timestep"].astype(dtype)
            return {
                "out_sample": (2 * v["sample"].astype(dtype) + t[:, None, None, None]).astype(
                    np.float32
                )
            }

    else:
        tensors["last_hidden_state"] = ("output", np.float32, lambda s: (*s["input_ids"], 32))
        tensors["pooler_output"] = ("output", np.float32, lambda s: (s["input_ids"][0], 32))

        def compute(v):
            b, n = v["input_ids"].shape
            return {
                "last_hidden_state": np.zeros((b, n, 32), np.float32),
                "pooler_output": np.zeros((b, 32), np.float32),
            }

    return FakeEngine(tensors, compute)


class PlanWriter:
    """A builder writing a plan that names its component and precision."""

    def build(self, request):
        request.timing_cache.write_text("timings")
        request.plan_path.write_bytes(
            plan_bytes(request.onnx_path.parent.name, "fp16" if request.fp16 else "fp32")
        )


def built_folder(tmp_path, env=ENV):
    folder = tmp_path / "model"
    make_folder(folder)
    options = TensorRTBuildOptions(shapes=ShapeRange(64, 64, 64, 64, 128, 128, 1, 1, 2))
    build_engines(
        folder,
        options,
        environment=env,
        builder=PlanWriter(),
        verifier=FakeVerifier(),
        progress=lambda m: None,
    )
    manifest = read_manifest(folder)
    for record in manifest.engines:
        precision = record.options["precision"]
        dtype = np.float16 if precision == "fp16" else np.float32
        component = manifest.components[record.component]
        FakeTrtRuntime._plans[plan_bytes(record.component, precision)] = (
            lambda c=component, r=record, d=dtype: engine_for(c, r, d)
        )
    return folder, manifest


def test_open_sessions_loads_verified_fp16_engines_into_one_block(fakes, tmp_path):
    from sdrt.backends.tensorrt import BACKEND

    folder, manifest = built_folder(tmp_path)
    sessions = BACKEND.open_sessions(
        folder, manifest, ("text_encoder", "unet", "vae_decoder"), MACHINE
    )
    assert FakeTrtRuntime._deserialized == [
        plan_bytes(n, "fp16") for n in ("text_encoder", "unet", "vae_decoder")
    ]
    unet = sessions["unet"]
    assert unet._memory is sessions["text_encoder"]._memory  # one activation block
    sample = np.random.default_rng(0).standard_normal((2, 4, 8, 8), np.float32)
    f = {
        "sample": sample,
        "timestep": np.array([3.0], np.float32),
        "encoder_hidden_states": np.zeros((2, 77, 32), np.float32),
    }
    out = unet.run(f)["out_sample"]
    np.testing.assert_allclose(out.get(), 2 * sample + 3.0, rtol=1e-3, atol=1e-2)


def test_the_vae_decoder_falls_back_to_its_fp32_engine_on_fp16_overflow(fakes, tmp_path, caplog):
    from sdrt.backends.tensorrt import BACKEND

    folder, manifest = built_folder(tmp_path)
    vae = BACKEND.open_sessions(folder, manifest, ("vae_decoder",), MACHINE)["vae_decoder"]
    assert FakeTrtRuntime._deserialized == [plan_bytes("vae_decoder", "fp16")]  # fp32 not yet
    small = np.full((1, 4, 8, 8), 0.5, np.float32)
    np.testing.assert_array_equal(vae.run({"latent_sample": small})["sample"].get(), 1.0)
    big = np.full((1, 4, 8, 8), 40000.0, np.float32)  # 80000 overflows fp16
    with caplog.at_level(logging.WARNING, logger="sdrt.backends.nan_guard"):
        out = vae.run({"latent_sample": big})["sample"].get()
    assert "fp16 overflow" in caplog.text
    assert np.isfinite(out).all() and np.all(out == 80000.0)
    assert FakeTrtRuntime._deserialized[-1] == plan_bytes("vae_decoder", "fp32")
    fallback = vae._fallback
    assert fallback._memory is vae._primary._memory  # the fallback shares the block too


def test_fp32_fallback_is_none_without_a_usable_fp32_engine(fakes, tmp_path, caplog):
    from sdrt.backends.tensorrt import _fp32_fallback, build_environment, shared_memory_for

    folder, manifest = built_folder(tmp_path)
    memory = shared_memory_for(folder)
    here = build_environment(MACHINE)
    make = _fp32_fallback(folder, manifest, "vae_decoder", here, memory)
    session = make()
    assert session._memory is memory and FakeTrtRuntime._deserialized == [
        plan_bytes("vae_decoder", "fp32")
    ]
    assert _fp32_fallback(folder, manifest, "unet", here, memory) is None  # no fp32 record
    hopper = BuildEnvironment("tensorrt", "10.3.0", "9.0", "NVIDIA H200")
    with caplog.at_level(logging.WARNING, logger="sdrt.backends.tensorrt"):
        assert _fp32_fallback(folder, manifest, "vae_decoder", hopper, memory) is None
    assert "no fp32 fallback for fp16 overflow" in caplog.text


def test_open_sessions_refuses_stale_engines(fakes, tmp_path):
    from sdrt.backends.tensorrt import BACKEND

    folder, manifest = built_folder(tmp_path)
    hopper = Machine("10.3.0", "14.2.0", 1, (), "9.0")
    with pytest.raises(BackendUnavailableError, match="rebuild with `sdrt engines build FOLDER`"):
        BACKEND.open_sessions(folder, manifest, ("unet",), hopper)
    assert FakeTrtRuntime._deserialized == []  # a stale plan is never loaded


def test_load_refuses_a_plan_tensorrt_cannot_deserialize(fakes, tmp_path):
    from sdrt.backends.tensorrt import TensorRTSession, trt_runtime

    plan = tmp_path / "unet.plan"
    plan.write_bytes(b"built by another TensorRT")
    inputs = (
        TensorSpec("sample", "float32", ("steps", 4, "h", "w")),
        TensorSpec("timestep", "float32", ("steps",)),
    )
    outputs = (TensorSpec("out_sample", "float32", ("steps", 4, "h", "w")),)
    with pytest.raises(BackendUnavailableError, match="could not deserialize .*unet.plan"):
        TensorRTSession.load("unet", plan, inputs, outputs)
    FakeTrtRuntime._plans[b"good"] = unet_like_engine
    plan.write_bytes(b"good")
    session = TensorRTSession.load("unet", plan, inputs, outputs, cuda_graph=True)
    assert session.cuda_graph and session._engine._plan == b"good"
    assert trt_runtime() is trt_runtime()  # one runtime per process
    assert trt_runtime().logger.min_severity == "Severity.WARNING"


# ---------------------------------------------------------------------------- the builder


def identity_graph(path: Path) -> Path:
    """latent_sample -> sample: a tiny fp32 graph (2 * x + 1)."""
    two = helper.make_tensor("two", TensorProto.FLOAT, (), [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, (), [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["latent_sample", "two"], ["y"]),
            helper.make_node("Add", ["y", "one"], ["sample"]),
        ],
        "g",
        [helper.make_tensor_value_info("latent_sample", TensorProto.FLOAT, ["batch", 4, "h", "w"])],
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 4, "h", "w"])],
        [two, one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def request(tmp_path, fp16=True, timing=False):
    onnx_path = identity_graph(tmp_path / "vae_decoder" / "model.onnx")
    cache = tmp_path / "engines" / "timing.cache"
    cache.parent.mkdir(parents=True, exist_ok=True)
    if timing:
        cache.write_text("old timings")
    profile = {"latent_sample": {"min": (1, 4, 8, 8), "opt": (1, 4, 16, 16), "max": (2, 4, 32, 32)}}
    return BuildRequest(
        onnx_path, tmp_path / "engines" / "vae.plan.partial", profile, fp16, False, 3, cache
    )


@pytest.fixture
def polygraphy(monkeypatch):
    from gpu_names import NAMES as names

    fake = FakePolygraphy(tuple(names["polygraphy"]["CreateConfig"]))
    for name, module in fake.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return fake


def test_tensorrt_10_builds_fp16_from_the_fp32_graph_with_tf32_off(fakes, polygraphy, tmp_path):
    req = request(tmp_path, fp16=True, timing=True)
    TensorRTBuilder().build(req)
    (config,) = polygraphy.configs
    assert config["fp16"] is True and config["tf32"] is False  # FP32 thresholds rely on it
    assert config["refittable"] is False and config["builder_optimization_level"] == 3
    assert config["load_timing_cache"] == str(req.timing_cache)
    (profile,) = config["profiles"]
    assert profile._shapes == {"latent_sample": ((1, 4, 8, 8), (1, 4, 16, 16), (2, 4, 32, 32))}
    ((path, network),) = polygraphy.networks
    assert path == str(req.onnx_path) and network["strongly_typed"] is None  # weakly typed
    (build,) = polygraphy.builds
    assert build["config"] is config and build["save_timing_cache"] == str(req.timing_cache)
    assert req.plan_path.read_bytes() == b"plan"


def test_tensorrt_11_builds_strongly_typed_from_an_fp16_copy(
    fakes, polygraphy, tmp_path, monkeypatch
):
    install(monkeypatch, tensorrt=fake_tensorrt("11.1.0"))
    req = request(tmp_path, fp16=True)
    TensorRTBuilder().build(req)
    (config,) = polygraphy.configs
    assert config["fp16"] is None and config["tf32"] is False  # no FP16 flag in TensorRT 11
    assert config["load_timing_cache"] is None  # none yet
    ((path, network),) = polygraphy.networks
    assert network["strongly_typed"] is True
    assert Path(path) != req.onnx_path and not Path(path).exists()  # a scratch copy, deleted
    copy = onnx.load_from_string(network["graph"])
    assert any(i.data_type == TensorProto.FLOAT16 for i in copy.graph.initializer)
    assert copy.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # fp32 I/O kept


def test_an_fp32_build_is_fp32_and_a_failed_build_is_an_error(fakes, polygraphy, tmp_path):
    TensorRTBuilder().build(request(tmp_path, fp16=False))
    assert polygraphy.configs[0]["fp16"] is False and polygraphy.configs[0]["tf32"] is False
    polygraphy.result = None
    with pytest.raises(SdrtError, match="TensorRT could not build an engine from"):
        TensorRTBuilder().build(request(tmp_path / "again"))


# ---------------------------------------------------------------------------- the verifier


def unet_graph(path: Path) -> Path:
    """out_sample = 2 * sample + timestep (per batch item), as unet_like_engine computes."""
    two = helper.make_tensor("two", TensorProto.FLOAT, (), [2.0])
    shape = helper.make_tensor("shape", TensorProto.INT64, (4,), [-1, 1, 1, 1])
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["sample", "two"], ["twice"]),
            helper.make_node("Reshape", ["timestep", "shape"], ["t"]),
            helper.make_node("Add", ["twice", "t"], ["out_sample"]),
        ],
        "unet",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["steps", 4, "h", "w"]),
            helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["steps"]),
        ],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, ["steps", 4, "h", "w"])],
        [two, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def test_the_verifier_compares_the_engine_with_onnxruntime(fakes, tmp_path):
    unet_graph(tmp_path / "unet" / "model.onnx")
    component = Component(
        name="unet",
        file="unet/model.onnx",
        sha256="",
        precision="fp32",
        opset=17,
        inputs=(
            TensorSpec("sample", "float32", ("steps", 4, "h", "w")),
            TensorSpec("timestep", "float32", ("steps",)),
        ),
        outputs=(TensorSpec("out_sample", "float32", ("steps", 4, "h", "w")),),
    )
    profile = {
        "sample": {"min": (1, 4, 4, 4), "opt": (2, 4, 8, 8), "max": (4, 4, 16, 16)},
        "timestep": {"min": (1,), "opt": (2,), "max": (4,)},
    }
    plan = tmp_path / "unet.plan"
    plan.write_bytes(b"right")
    FakeTrtRuntime._plans[b"right"] = unet_like_engine
    result = TensorRTVerifier().verify(tmp_path, component, plan, profile, FP32)
    assert result.passed and result.max_abs_error < 1e-4
    assert [c.input_shapes["sample"] for c in result.cases] == [(2, 4, 8, 8), (1, 4, 4, 4)]
    # An engine a little off (fp16 rounding of a large timestep) is caught at the fp32 gate
    # and passes the fp16 one.
    FakeTrtRuntime._plans[b"right"] = lambda: unet_like_engine(dtype=np.float16)
    assert not TensorRTVerifier().verify(tmp_path, component, plan, profile, FP32).passed
    assert TensorRTVerifier().verify(tmp_path, component, plan, profile, FP16).passed


# ---------------------------------------------------------------------------- plan integrity
# A plan is checked against the sha256 its engine record lists (sdrt.integrity) before
# TensorRT deserializes it: garbage would otherwise reach TensorRT, or fail naming no file.


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files sdrt.integrity hashes, in order."""
    import sdrt.integrity as integrity

    calls, real = [], integrity.sha256_file

    def counting(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(integrity, "sha256_file", counting)
    return calls


def _unet_record(manifest):
    return next(e for e in manifest.engines if e.component == "unet")


def _unet_plan(folder: Path, manifest) -> Path:
    return folder / _unet_record(manifest).path


def test_a_plan_with_flipped_bits_is_refused_naming_it(fakes, tmp_path):
    from sdrt.backends.tensorrt import BACKEND

    folder, manifest = built_folder(tmp_path)
    plan = _unet_plan(folder, manifest)
    data = bytearray(plan.read_bytes())
    data[len(data) // 2] ^= 0x10  # same size
    plan.write_bytes(bytes(data))
    rel = plan.relative_to(folder).as_posix()
    with pytest.raises(ModelFolderError) as e:
        BACKEND.open_sessions(folder, manifest, ("text_encoder", "unet"), MACHINE)
    message = str(e.value)
    assert f"{rel}: expected sha256 {_unet_record(manifest).sha256}, got " in message
    assert message.endswith(f"rebuild it with `sdrt engines build {folder}`")
    assert "truncated" not in message
    assert plan_bytes("unet", "fp16") not in FakeTrtRuntime._deserialized  # never mapped


def test_a_truncated_plan_is_named_as_truncated(fakes, tmp_path):
    from sdrt.backends.tensorrt import BACKEND

    folder, manifest = built_folder(tmp_path)
    plan = _unet_plan(folder, manifest)
    size = plan.stat().st_size
    plan.write_bytes(plan.read_bytes()[: size // 2])
    with pytest.raises(ModelFolderError, match=r"unet\.plan: expected sha256 .*\(truncated\)"):
        BACKEND.open_sessions(folder, manifest, ("unet",), MACHINE)
    # Also in a copied folder, whose identity record is not this one: the engine record's size.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".sdrt-verified.json"))
    with pytest.raises(ModelFolderError, match=rf"{size // 2} bytes where it had {size} .*"):
        BACKEND.open_sessions(copy, manifest, ("unet",), MACHINE)
    assert FakeTrtRuntime._deserialized == []


def test_a_plan_is_hashed_once_then_trusted_while_unchanged(fakes, tmp_path, hashed):
    import sdrt.integrity as integrity
    from sdrt.backends.tensorrt import BACKEND

    folder, manifest = built_folder(tmp_path)
    assert all(e.sha256 and e.size == (folder / e.path).stat().st_size for e in manifest.engines)
    hashed.clear()  # the build hashed what it wrote, and recorded it
    BACKEND.open_sessions(folder, manifest, ("unet",), MACHINE)
    assert hashed == []
    copy = tmp_path / "copy"  # new inodes: each plan a load maps is hashed, once
    shutil.copytree(folder, copy)
    integrity.open_model_folder(copy)
    assert sorted(hashed) == sorted(
        [Path(c.file).name for c in manifest.components.values()]
        + [Path(e.path).name for e in manifest.engines]
    )
    hashed.clear()
    integrity.open_model_folder(copy)
    BACKEND.open_sessions(copy, manifest, ("text_encoder", "unet", "vae_decoder"), MACHINE)
    assert hashed == []  # the second load hashes nothing


def test_a_copied_plan_is_hashed_when_the_backend_maps_it(fakes, tmp_path, hashed):
    from sdrt.backends.tensorrt import BACKEND

    folder, manifest = built_folder(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    hashed.clear()
    BACKEND.open_sessions(copy, manifest, ("unet",), MACHINE)  # verify_files="never"'s path
    assert hashed == ["unet.plan"]
    BACKEND.open_sessions(copy, manifest, ("unet",), MACHINE)
    assert hashed == ["unet.plan"]


def test_a_bad_plan_does_not_stop_a_load_that_does_not_map_it(fakes, tmp_path, caplog):
    import sdrt.integrity as integrity

    folder, manifest = built_folder(tmp_path)
    plan = _unet_plan(folder, manifest)
    plan.write_bytes(plan.read_bytes()[:-1])
    with caplog.at_level(logging.WARNING, logger="sdrt.integrity"):
        integrity.open_model_folder(folder)  # an ort-cpu load, say
    assert "unet.plan: expected sha256" in caplog.text
    assert "sdrt engines build" in caplog.text


def test_a_plan_recorded_without_sha256_is_loaded_unchecked_and_said_so(fakes, tmp_path, capsys):
    import json

    from sdrt import cli
    from sdrt.backends.tensorrt import BACKEND

    folder, _ = built_folder(tmp_path)
    data = json.loads((folder / "sdrt.json").read_text())
    for engine in data["engines"]:  # as an older sdrt wrote them
        del engine["sha256"], engine["size"]
    (folder / "sdrt.json").write_text(json.dumps(data))
    manifest = read_manifest(folder)
    BACKEND.open_sessions(folder, manifest, ("unet",), MACHINE)
    assert cli.main(["info", "--verify", str(folder)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(_unet_record(manifest).path))
    assert row.endswith("not checked (built before sdrt recorded plan sha256s)")


def test_info_verify_reports_the_plans(fakes, tmp_path, capsys):
    from sdrt import cli

    folder, manifest = built_folder(tmp_path)
    assert cli.main(["info", "--verify", str(folder)]) == 0
    out = capsys.readouterr().out
    for engine in manifest.engines:
        row = next(line for line in out.splitlines() if line.startswith(engine.path + " "))
        assert row.count(engine.sha256[:16]) == 2 and row.endswith(" ok")
    plan = _unet_plan(folder, manifest)
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    assert cli.main(["info", "--verify", str(folder)]) == 2
    captured = capsys.readouterr()
    assert next(
        line for line in captured.out.splitlines() if line.startswith(_unet_record(manifest).path)
    ).endswith("MISMATCH (truncated)")
    error = captured.err.splitlines()[-1]
    assert f"{_unet_record(manifest).path}: expected sha256 " in error
    assert error.endswith(f"(engine plans: rebuild them with `sdrt engines build {folder}`)")


def test_a_bad_fp32_fallback_plan_is_refused_at_load_not_at_the_first_overflow(fakes, tmp_path):
    from sdrt.backends.tensorrt import BACKEND

    folder, manifest = built_folder(tmp_path)
    record = next(
        e
        for e in manifest.engines
        if e.component == "vae_decoder" and e.options["precision"] == "fp32"
    )
    (folder / record.path).write_bytes(b"x" * (record.size or 0))
    with pytest.raises(ModelFolderError, match=f"{record.path}: expected sha256 {record.sha256}"):
        BACKEND.open_sessions(folder, manifest, ("vae_decoder",), MACHINE)
