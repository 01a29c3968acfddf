"""The gpu tier skips without CUDA, but fails when asked for (``-m gpu``) on a broken install."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import conftest
import pytest

pytest_plugins = ["pytester"]

GPU_TEST = """
import pytest

@pytest.mark.gpu
def test_on_the_gpu():
    pass
"""


@pytest.mark.parametrize(
    ("markexpr", "asked"),
    [
        ("gpu", True),
        ("gpu and not slow", True),
        ("slow or gpu", True),
        ("not gpu", False),
        ("", False),
        ("slow", False),
        ("not  gpu", False),
    ],
)
def test_which_marker_expressions_ask_for_the_gpu_tier(markexpr, asked):
    assert conftest.gpu_tier_asked(markexpr) is asked


def broken_cupy():
    cupy = types.ModuleType("cupy")

    def fails():
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=fails))
    return cupy


@pytest.fixture
def broken(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", broken_cupy())
    conftest.cuda_problem.cache_clear()
    yield
    conftest.cuda_problem.cache_clear()


def test_the_probe_says_what_is_broken(broken):
    assert not conftest.cuda_available()
    assert (
        "cupy cannot reach CUDA: RuntimeError: cudaErrorInsufficientDriver"
        in conftest.cuda_problem()
    )


def run(pytester, *args):
    pytester.makeconftest(Path(conftest.__file__).read_text())
    pytester.makeini("[pytest]\nmarkers =\n    gpu: gpu\n    slow: slow\n")
    pytester.makepyfile(test_gpu=GPU_TEST)
    return pytester.runpytest_inprocess(*args)


def test_a_broken_install_skips_by_default_and_fails_when_asked(broken, pytester):
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*gpu: cupy cannot reach CUDA: RuntimeError*"])
    result = run(pytester, "-m", "gpu")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the gpu tier was asked for, but cupy cannot reach CUDA*"])
