"""Test tiers: unit (no model), export/runtime on the tiny random model, heavy, slow, gpu.

``heavy`` tests (tiny models, but builds of their own that take minutes of CPU: int8 and
NNCF calibration, every fast mode at once, fused adapters, the benchmark end to end, Ray)
run only when selected with ``-m heavy``; CI (.ci/run) runs them after the default run. A
test that asks for one of ``HEAVY_FIXTURES`` is heavy without a marker of its own, so that
a fixture's build is paid in one tier only.
``slow`` tests (full-size architectures) run only when selected with ``-m slow``.
``gpu`` tests skip cleanly where CUDA is absent, unless the gpu tier is asked for
(``-m gpu``, or any marker expression naming gpu other than ``not gpu``): then a machine
whose cupy or CUDA cannot be reached fails each of them with the probe's error, so that a
broken install on a GPU machine shows up red instead of as a row of skips.
"""

from __future__ import annotations

import functools
import re

import pytest


@functools.cache
def cuda_problem() -> str | None:
    """None when cupy sees a CUDA device, else what is wrong."""
    try:
        import cupy
    except ImportError as e:
        return f"cupy is not installed ({e})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError, a missing driver library, a broken wheel...
        return f"cupy cannot reach CUDA: {type(e).__name__}: {e}"
    return None if count > 0 else "cupy sees no CUDA device"


def cuda_available() -> bool:
    return cuda_problem() is None


def gpu_tier_asked(markexpr: str) -> bool:
    """Whether ``-m`` names the gpu marker other than to exclude it."""
    return re.search(r"(?<!not )\bgpu\b", " ".join(markexpr.split())) is not None


# Session and module fixtures whose build is a large share of the default run's CPU time
# (each a minute or more of CPU on 2 cores): every test that uses one is in the heavy tier.
HEAVY_FIXTURES = frozenset(
    {
        "tiny_built_int8",  # int8 calibration (tests/test_build_int8.py)
        "tiny_nncf",  # NNCF int8 (tests/test_build_int8_nncf.py)
        "tiny_built_all_modes",  # int8 + DeepCache + tiny VAE in one folder
        "lcm_int8",  # tiny-lcm: int8 + DeepCache + tiny VAE (tests/test_lcm_fast_modes.py)
        "lcm_nncf",  # tiny-lcm: NNCF int8 + DeepCache + tiny VAE
        "bench_report",  # `sdrt bench` end to end (tests/test_bench_cli.py)
        "quick_report",
        "modes_report",  # `sdrt bench` with fast-mode contenders
        "turbo_bench_report",  # `sdrt bench` on tiny-turbo (tests/test_bench_turbo.py)
        "turbo_built",  # init-model tiny-turbo built through the CLI (tests/test_recipes.py)
    }
)


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("markexpr") or ""
    skip_slow = pytest.mark.skip(reason="slow: run with -m slow")
    skip_heavy = pytest.mark.skip(reason="heavy: run with -m heavy")
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker("heavy")
    # -m is applied after this hook, so the marks added above take part in it
    for item in items:
        if "slow" in item.keywords and "slow" not in markexpr:
            item.add_marker(skip_slow)
        if "heavy" in item.keywords and "heavy" not in markexpr:
            item.add_marker(skip_heavy)
        if "gpu" in item.keywords and not gpu_tier_asked(markexpr) and not cuda_available():
            item.add_marker(pytest.mark.skip(reason=f"gpu: {cuda_problem()}"))


def pytest_runtest_setup(item):
    if "gpu" in item.keywords and not cuda_available():
        # Reached only when the gpu tier was asked for (otherwise the test is skipped).
        pytest.fail(f"the gpu tier was asked for, but {cuda_problem()}", pytrace=False)


# ---------------------------------------------------------------------------- tiny model

# The tiny architecture's native image size is 64 px; the built folder serves 64..256 px.
TINY_MIN_SIZE = 64
TINY_MAX_SIZE = 256


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    """The `tiny` random-weight diffusers folder (made once per test session)."""
    from sdrt.export.random_model import init_random_model

    return init_random_model("tiny", tmp_path_factory.mktemp("tiny-source") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_xl_source(tmp_path_factory):
    """The `tiny-xl` random-weight diffusers folder (made once per test session)."""
    from sdrt.export.random_model import init_random_model

    return init_random_model("tiny-xl", tmp_path_factory.mktemp("tiny-xl") / "tiny-xl", seed=0)


def _build_tiny(tiny_source, tmp_path_factory, folder: str, **options):
    from sdrt.export.build import BuildConfig, build

    config = BuildConfig(
        source=str(tiny_source),
        output=tmp_path_factory.mktemp(folder) / "tiny",
        min_size=TINY_MIN_SIZE,
        max_size=TINY_MAX_SIZE,
        **options,
    )
    return build(config).output


@pytest.fixture(scope="session")
def tiny_built(tiny_source, tmp_path_factory):
    """`tiny_source` built to an fp32 sdrt model folder (made once per test session)."""
    return _build_tiny(tiny_source, tmp_path_factory, "tiny-built")


@pytest.fixture(scope="session")
def tiny_xl_built(tiny_xl_source, tmp_path_factory):
    """`tiny_xl_source` built to an fp32 sdrt model folder (made once per test session)."""
    return _build_tiny(tiny_xl_source, tmp_path_factory, "tiny-xl-built")


@pytest.fixture(scope="session")
def tiny_built_int8(tiny_source, tmp_path_factory):
    """`tiny_source` built with an int8 U-Net (calibrated; made once per test session)."""
    prompts = ("a red fox in snow", "an astronaut riding a horse", "a bowl of fruit")
    return _build_tiny(
        tiny_source,
        tmp_path_factory,
        "tiny-built-int8",
        precision="int8",
        calibration_prompts=prompts,
    )


@pytest.fixture(scope="session")
def tiny_built_lora_ready(tiny_source, tmp_path_factory):
    """`tiny_source` built with LoRA-ready weights (run-time LoRA; made once per session)."""
    return _build_tiny(tiny_source, tmp_path_factory, "tiny-built-lora-ready", lora_ready=True)


@pytest.fixture(scope="session")
def tiny_built_lora_ready_all(tiny_source, tmp_path_factory):
    """`tiny_source` built `--lora-ready all`: every Linear and conv of the U-Net gets a
    branch (3x3 convs included), as distillation LoRAs need."""
    return _build_tiny(
        tiny_source,
        tmp_path_factory,
        "tiny-built-lora-ready-all",
        lora_ready=True,
        lora_targets="all",
    )


@pytest.fixture(scope="session")
def tiny_built_deep_cache(tiny_source, tmp_path_factory):
    """`tiny_source` built with DeepCache's graphs for branches 0 and 1 (once per session)."""
    return _build_tiny(
        tiny_source, tmp_path_factory, "tiny-built-deep-cache", deep_cache_branches=(0, 1)
    )


@pytest.fixture(scope="session")
def tiny_built_fp16(tiny_source, tmp_path_factory):
    """`tiny_source` built to an fp16 sdrt model folder (made once per test session)."""
    return _build_tiny(tiny_source, tmp_path_factory, "tiny-built-fp16", precision="fp16")


@pytest.fixture(scope="session")
def tiny_built_all_modes(tiny_source, tmp_path_factory):
    """`tiny_source` with an int8 U-Net, DeepCache branch 0 and a tiny VAE (once per session)."""
    from sdrt.export.random_tiny_vae import init_random_tiny_vae

    taesd = init_random_tiny_vae("tiny-taesd", tmp_path_factory.mktemp("taesd") / "taesd")
    return _build_tiny(
        tiny_source,
        tmp_path_factory,
        "tiny-all-modes",
        precision="int8",
        calibration_prompts=("a red fox in snow", "a bowl of fruit"),
        deep_cache_branches=(0,),
        tiny_vae=str(taesd),
    )


# ---------------------------------------------------------------------------- ControlNet

# The names tiny_built_controlnet builds its two tiny ControlNets under, in build order.
TINY_CONTROLNETS = ("edges", "depth")


@pytest.fixture(scope="session")
def tiny_controlnet_sources(tiny_source, tmp_path_factory):
    """Two random ControlNetModels of the tiny U-Net (tests/controlnet_helpers.py), by name."""
    from controlnet_helpers import make_tiny_controlnet

    root = tmp_path_factory.mktemp("tiny-controlnets")
    return {
        name: make_tiny_controlnet(tiny_source, root / name, seed=1 + i)
        for i, name in enumerate(TINY_CONTROLNETS)
    }


@pytest.fixture(scope="session")
def tiny_built_controlnet(tiny_built, tiny_controlnet_sources, tmp_path_factory):
    """tiny_built rebuilt with both ControlNets: its graphs reused, the ControlNets and the
    residual-taking U-Net exported (once per session)."""
    from controlnet_helpers import controlnet_options, rebuild_with

    output = tmp_path_factory.mktemp("tiny-controlnet") / "tiny"
    controlnets = controlnet_options(tiny_controlnet_sources)
    return rebuild_with(tiny_built, output, controlnets=controlnets).output


# ---------------------------------------------------------------------------- T2I-Adapter

# The name tiny_built_adapter builds its tiny T2I-Adapter under.
TINY_ADAPTER = "sketch"


def _rebuild_with_adapter(built, adapter_source, tmp_path_factory, folder: str):
    """``built`` rebuilt with the adapter: its graphs reused, the adapter's exported."""
    from controlnet_helpers import rebuild_with
    from sdrt.export.t2i_adapter_options import T2IAdapterOption

    option = T2IAdapterOption(TINY_ADAPTER, str(adapter_source))
    output = tmp_path_factory.mktemp(folder) / "tiny"
    return rebuild_with(built, output, t2i_adapter=option).output


@pytest.fixture(scope="session")
def tiny_adapter_source(tiny_source, tmp_path_factory):
    """A random full_adapter T2IAdapter of the tiny U-Net (tests/adapter_helpers.py)."""
    from adapter_helpers import make_tiny_t2i_adapter

    return make_tiny_t2i_adapter(tiny_source, tmp_path_factory.mktemp("adapter") / "a", seed=3)


@pytest.fixture(scope="session")
def tiny_built_adapter(tiny_built, tiny_adapter_source, tmp_path_factory):
    """tiny_built rebuilt with the tiny T2I-Adapter (once per session)."""
    return _rebuild_with_adapter(tiny_built, tiny_adapter_source, tmp_path_factory, "tiny-ad")


@pytest.fixture(scope="session")
def tiny_xl_adapter_source(tiny_xl_source, tmp_path_factory):
    """A random full_adapter_xl T2IAdapter of the tiny SDXL U-Net."""
    from adapter_helpers import make_tiny_t2i_adapter

    output = tmp_path_factory.mktemp("adapter-xl") / "a"
    return make_tiny_t2i_adapter(
        tiny_xl_source, output, seed=4, downscale_factor=16, adapter_type="full_adapter_xl"
    )


@pytest.fixture(scope="session")
def tiny_xl_built_adapter(tiny_xl_built, tiny_xl_adapter_source, tmp_path_factory):
    """tiny_xl_built rebuilt with the tiny SDXL T2I-Adapter (once per session)."""
    return _rebuild_with_adapter(
        tiny_xl_built, tiny_xl_adapter_source, tmp_path_factory, "tiny-xl-ad"
    )
