"""Fast modes as benchmark contenders: names parsed into build and call options, and the
report's table of each mode against exact sdrt and torch."""

from __future__ import annotations

import pytest
from sdrt.benchmarks import fast_modes
from sdrt.benchmarks.contenders import is_known, resolve
from sdrt.benchmarks.report import _fast_modes
from sdrt.export.tome_options import TomeOptions

from sdrt.errors import InputError


def test_a_name_splits_into_backend_build_and_call_options():
    contender = fast_modes.split_contender("ort-cpu+int8+deepcache3b1+tome0.5")
    assert contender.backend == "ort-cpu"
    assert contender.build_options == {
        "precision": "int8",
        "deep_cache_branches": (1,),
        "tome": TomeOptions(0.5),
    }
    assert contender.call_options == {"deep_cache_interval": 3, "deep_cache_branch": 1}
    assert fast_modes.exact_name(contender.name) == "ort-cpu"
    assert fast_modes.exact_name("ort-cpu") is None


def test_variants_share_a_folder_only_when_their_build_options_are_equal():
    split = fast_modes.split_contender
    assert split("ort-cpu").variant_key is None
    # DeepCache's interval is a call option: every interval runs on one --deep-cache build
    assert split("ort-cpu+deepcache2").variant_key == split("ort-cpu+deepcache5").variant_key
    assert split("ort-cpu+int8").variant_key != split("ort-cpu+deepcache2").variant_key
    assert split("ort-cpu+int8+tome0.3").variant_key == split("ort-cpu+tome0.3+int8").variant_key


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ort-cpu+int4", "unknown fast mode 'int4'"),
        ("ort-cpu+deepcache0", "interval >= 1"),
        ("ort-cpu+tome1.5", "unknown fast mode"),
        ("ort-cpu+tome0.9", "ratio"),
        ("ort-cpu+int8+int8", "sets precision again"),
    ],
)
def test_bad_modes_are_named(name, message):
    with pytest.raises(InputError, match=message):
        fast_modes.split_contender(name)


def test_only_sdrt_backends_take_modes():
    assert is_known("ort-cpu+int8")
    with pytest.raises(InputError, match="expected torch with some of the modes tinyvae"):
        is_known("torch+int8")  # eager diffusers takes its own tiny VAE only
    assert not is_known("optimum+int8")
    with pytest.raises(InputError, match="fast modes run on an sdrt backend"):
        resolve("auto+int8", None)


def test_a_mode_contender_runs_sdrt_on_its_variant_with_its_call_options():
    spec = resolve("ort-cpu+deepcache3", None)
    assert spec.extra_args == (
        "ort-cpu",
        "--call-options",
        '{"deep_cache_branch": 0, "deep_cache_interval": 3}',
    )
    assert spec.variant == fast_modes.split_contender("ort-cpu+deepcache3").variant_key


def test_an_openvino_contender_gets_nncf_int8_and_its_threads():
    pytest.importorskip("openvino")
    from sdrt.benchmarks.contenders.sdrt_runtime import _thread_options

    from sdrt.backends.openvino import OpenVinoOptions

    spec = resolve("openvino+int8", None)
    assert spec.extra_args[0] == "openvino"
    # openvino's int8 is NNCF's IR, ONNX Runtime's the QDQ graph: two variant folders
    assert fast_modes.split_contender("openvino+int8").build_options == {
        "precision": "int8",
        "int8_method": "nncf",
    }
    assert fast_modes.split_contender("ort-cpu+int8").build_options == {"precision": "int8"}
    assert spec.variant != resolve("ort-cpu+int8", None).variant
    assert _thread_options("openvino", 2) == OpenVinoOptions(threads=2)
    assert _thread_options("ort-cpu", 2) is None  # ONNX Runtime's come as ort_options


def _record(name, end_to_end, unet, versus=None):
    result = {
        "size": "256x256",
        "stages": {"end_to_end_s": {"median": end_to_end}, "unet_s": {"median": unet}},
    }
    if versus is not None:
        result["versus_exact"] = versus
    return {"name": name, "results": [result]}


def test_the_report_gives_speedups_against_exact_sdrt_and_torch_and_the_quality_cost():
    versus = {"psnr_db": 31.25, "max_abs_diff": 0.125, "identical": False}
    report = {
        "contenders": [
            _record("torch", 12.0, 10.0),
            _record("ort-cpu", 6.0, 5.0),
            _record("ort-cpu+deepcache3", 3.0, 2.0, versus),
        ]
    }
    lines = _fast_modes(report, "256x256")
    rows = [line for line in lines if line.startswith("| ort-cpu+deepcache3")]
    assert rows == [
        "| ort-cpu+deepcache3 | 3.00 s | 2.00x | 4.00x | 2.00 s | 2.50x | 31.2 dB | 1.25e-01 | — |"
    ]
    assert _fast_modes({"contenders": report["contenders"][:2]}, "256x256") == []


@pytest.fixture(scope="module")
def modes_report(tiny_source, tiny_built, tmp_path_factory):
    import contextlib
    import io
    import json

    from sdrt.cli import main

    out = tmp_path_factory.mktemp("bench-modes") / "report"
    argv = [
        "bench", str(tiny_source), "--built", str(tiny_built),
        "--backends", "ort-cpu,ort-cpu+deepcache3,ort-cpu+tinyvae", "--tiny-vae", "RANDOM",
        "--size", "64", "--steps", "4", "--runs", "1", "--warmup", "0", "--threads", "2",
        "--peak-samples", "0", "--cache-dir", str(out.parent / "cache"), "-o", str(out),
    ]  # fmt: skip
    tiny_vae = out.parent / "taesd"
    from sdrt.export.random_tiny_vae import init_random_tiny_vae

    init_random_tiny_vae("tiny-taesd", tiny_vae, seed=0)
    argv[argv.index("RANDOM")] = str(tiny_vae)
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_modes_run_on_their_variant_builds_against_exact_sdrt(modes_report, tiny_built):
    from sdrt.benchmarks.report_schema import REPORT_SCHEMA

    from sdrt.manifest import read_manifest

    jsonschema = pytest.importorskip("jsonschema")
    out, report = modes_report
    jsonschema.validate(report, REPORT_SCHEMA)
    by_name = {c["name"]: c for c in report["contenders"]}
    assert all(c["status"] == "ok" for c in by_name.values()), by_name
    deep = by_name["ort-cpu+deepcache3"]
    assert deep["settings"]["call_options"] == {"deep_cache_interval": 3, "deep_cache_branch": 0}
    tiny = by_name["ort-cpu+tinyvae"]
    assert tiny["settings"]["call_options"] == {"vae": "tiny"}
    for contender in (deep, tiny):
        versus = contender["results"][0]["versus_exact"]
        assert versus["reference"] == "ort-cpu"
        # each mode really ran: its image is not exact sdrt's
        assert not versus["identical"] and versus["max_abs_diff"] > 1e-3
    assert "versus_exact" not in by_name["ort-cpu"]["results"][0]
    # the variants were built in the cache with their options, the user's folder left alone
    variants = sorted((out.parent / "cache" / "built").glob("*-*"))
    assert len(variants) == 2
    manifests = [read_manifest(v) for v in variants]
    assert sorted((m.deep_cache is not None, m.tiny_vae is not None) for m in manifests) == [
        (False, True),
        (True, False),
    ]
    assert read_manifest(tiny_built).deep_cache is None
    markdown = (out / "report.md").read_text()
    assert "## 64x64: fast modes" in markdown
    assert "| ort-cpu+deepcache3 |" in markdown
