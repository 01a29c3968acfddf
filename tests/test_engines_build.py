"""Engine cache decisions, records and failures, with a fake builder and verifier (no GPU)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from engine_helpers import make_folder
from sdrt.engines.profiles import ShapeRange
from sdrt.engines.tensorrt import (
    TensorRTBuildOptions,
    build_engines,
    default_timing_cache,
)

from sdrt.backends.engine_key import BuildEnvironment
from sdrt.backends.tensorrt import usable_engine
from sdrt.errors import BackendUnavailableError, VerificationError
from sdrt.manifest import (
    Verification,
    VerificationCase,
    manifest_from_dict,
    manifest_to_dict,
    read_manifest,
    sha256_file,
    write_manifest,
)

ENV = BuildEnvironment("tensorrt", "10.3.0", "8.9", "NVIDIA L4")


class FakeBuilder:
    """Writes a plan that names what it was built from; remembers every request."""

    def __init__(self):
        self.requests = []

    def build(self, request):
        self.requests.append(request)
        request.timing_cache.write_text("timings")
        request.plan_path.write_text(
            json.dumps({"onnx": request.onnx_path.name, "fp16": request.fp16})
        )


class FakeVerifier:
    def __init__(self, errors=None):
        self.errors = errors or {}  # component -> max abs error
        self.calls = []

    def verify(self, folder, component, plan_path, profile, thresholds):
        assert plan_path.is_file()  # verification runs on the finished plan
        self.calls.append(component.name)
        error = self.errors.get(component.name, 1e-6)
        case = VerificationCase(
            {n: tuple(levels["opt"]) for n, levels in profile.items()}, error, error
        )
        return Verification(
            "onnxruntime-fp32",
            thresholds.abs,
            thresholds.rel,
            (case,),
            error <= thresholds.abs or error <= thresholds.rel,
        )


def build(folder, shapes=None, env=ENV, builder=None, verifier=None, **options):
    options = TensorRTBuildOptions(shapes=shapes or ShapeRange.static(256, 256), **options)
    return build_engines(
        folder,
        options,
        environment=env,
        builder=builder or FakeBuilder(),
        verifier=verifier or FakeVerifier(),
        progress=lambda message: None,
    )


def test_build_records_every_engine_and_reuses_them(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    builder = FakeBuilder()
    report = build(folder, builder=builder)
    built = {(r.onnx_path.parent.name, r.fp16) for r in builder.requests}
    # fp16 engines for all three, plus the fp32 VAE decoder for the NaN fallback.
    assert built == {
        ("text_encoder", True),
        ("unet", True),
        ("vae_decoder", True),
        ("vae_decoder", False),
    }
    manifest = read_manifest(folder)
    assert manifest == report.manifest
    assert len(manifest.engines) == 4
    for engine in manifest.engines:
        assert engine.path == f"engines/tensorrt/{engine.cache_key}/{engine.component}.plan"
        assert (folder / engine.path).is_file()
        assert not list((folder / engine.path).parent.glob("*.partial"))
        assert engine.library_versions == {"tensorrt": "10.3.0"}
        assert engine.device["compute_capability"] == "8.9"
        assert engine.verification.passed
    timing = default_timing_cache(folder, ENV)
    assert timing.read_text() == "timings"
    assert all(r.timing_cache == timing for r in builder.requests)

    again = FakeBuilder()
    report = build(folder, builder=again)
    assert again.requests == []
    assert {p.action for p in report.plans} == {"reuse"}


def test_engine_records_round_trip_through_the_manifest(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    manifest = build(folder, shapes=ShapeRange(128, 128, 256, 256, 512, 512, 1, 1, 2)).manifest
    text = json.dumps(manifest_to_dict(manifest))
    assert manifest_from_dict(json.loads(text)) == manifest
    unet = next(e for e in manifest.engines if e.component == "unet")
    assert unet.profile["sample"]["max"] == (4, 4, 64, 64)
    assert unet.options["profile"]["sample"]["max"] == [4, 4, 64, 64]


def test_a_mismatched_key_is_rebuilt_not_loaded(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    first = build(folder).manifest
    old_unet = next(e for e in first.engines if e.component == "unet")

    # A new TensorRT version changes every key: everything is rebuilt, old plans removed.
    newer = dataclasses.replace(ENV, library_version="10.4.0")
    builder = FakeBuilder()
    report = build(folder, env=newer, builder=builder)
    assert len(builder.requests) == 4
    assert {p.action for p in report.plans} == {"build"}
    unet_plan = next(p for p in report.plans if p.component == "unet")
    assert old_unet.cache_key in unet_plan.reason
    assert not (folder / old_unet.path).exists()
    manifest = read_manifest(folder)
    assert len(manifest.engines) == 4  # replaced, not added
    assert old_unet.cache_key not in {e.cache_key for e in manifest.engines}

    # A refit-enabled build of one component changes only that key.
    builder = FakeBuilder()
    report = build(folder, env=newer, builder=builder, components=("unet",), refit=True)
    assert [r.onnx_path.parent.name for r in builder.requests] == ["unet"]
    assert builder.requests[0].refit is True
    assert len(read_manifest(folder).engines) == 4


def test_a_changed_graph_gets_a_new_engine(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    engines = build(folder).manifest.engines
    # A new unet graph: a new sha256 in the manifest, the engine records kept.
    retrained = make_folder(folder, contents={"unet": b"retrained unet"})
    write_manifest(folder, retrained.with_engines(engines))
    builder = FakeBuilder()
    build(folder, builder=builder)
    assert [r.onnx_path.parent.name for r in builder.requests] == ["unet"]


def test_missing_plan_is_rebuilt(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    manifest = build(folder).manifest
    vae = next(e for e in manifest.engines if e.component == "text_encoder")
    (folder / vae.path).unlink()
    builder = FakeBuilder()
    report = build(folder, builder=builder)
    assert [r.onnx_path.parent.name for r in builder.requests] == ["text_encoder"]
    plan = next(p for p in report.plans if p.component == "text_encoder")
    assert "missing" in plan.reason


def test_verification_failure_is_recorded_fails_the_build_and_is_rebuilt(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    with pytest.raises(VerificationError, match=r"unet \(fp16\).*max abs error 0\.5"):
        build(folder, verifier=FakeVerifier({"unet": 0.5}))
    manifest = read_manifest(folder)
    unet = next(e for e in manifest.engines if e.component == "unet")
    assert unet.verification.passed is False
    assert unet.verification.max_abs_error == 0.5
    # Loaders refuse it, and the next build does not reuse it.
    with pytest.raises(BackendUnavailableError, match="failed its verification"):
        usable_engine(manifest, "unet", "fp16", ENV)
    builder = FakeBuilder()
    build(folder, builder=builder)
    assert [r.onnx_path.parent.name for r in builder.requests] == ["unet"]


def test_failed_builder_leaves_no_plan_and_no_record(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)

    class Broken(FakeBuilder):
        def build(self, request):
            request.plan_path.write_text("half a plan")
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        build(folder, builder=Broken(), components=("unet",))
    assert read_manifest(folder).engines == ()
    assert not list(folder.glob("engines/tensorrt/*/*"))


def test_usable_engine_checks_the_key_against_this_machine(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    manifest = build(folder).manifest
    assert usable_engine(manifest, "unet", "fp16", ENV).component == "unet"
    other_gpu = dataclasses.replace(ENV, compute_capability="9.0")
    with pytest.raises(BackendUnavailableError, match="compute capability 8.9.*9.0.*rebuild"):
        usable_engine(manifest, "unet", "fp16", other_gpu)
    with pytest.raises(BackendUnavailableError, match="no fp16 TensorRT engine for vae_encoder"):
        usable_engine(manifest, "vae_encoder", "fp16", ENV)


def test_unknown_component_is_refused(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    from sdrt.errors import InputError

    with pytest.raises(InputError, match=r"components \['vae_encoder'\] are not in this model"):
        build(folder, components=("vae_encoder",))


def test_a_plan_changed_since_it_was_built_is_rebuilt(tmp_path):
    folder = tmp_path / "model"
    make_folder(folder)
    manifest = build(folder).manifest
    unet = next(e for e in manifest.engines if e.component == "unet")
    (folder / unet.path).write_text("not the plan that was built")
    builder = FakeBuilder()
    report = build(folder, builder=builder)
    assert [r.onnx_path.parent.name for r in builder.requests] == ["unet"]
    plan = next(p for p in report.plans if p.component == "unet" and p.action == "build")
    assert f"{unet.path}: expected sha256 {unet.sha256}" in plan.reason
    rebuilt = next(e for e in read_manifest(folder).engines if e.component == "unet")
    assert rebuilt.sha256 == sha256_file(folder / rebuilt.path)
