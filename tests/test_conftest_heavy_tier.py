"""The heavy tier: out of the default run, selected with ``-m heavy``; a test that asks for
one of the heavy fixtures is in it without a marker of its own."""

from __future__ import annotations

from pathlib import Path

import conftest

pytest_plugins = ["pytester"]

TESTS = """
import pytest

@pytest.fixture(scope="session")
def tiny_built_int8():
    return "built"

@pytest.mark.heavy
def test_marked():
    pass

def test_uses_a_heavy_fixture(tiny_built_int8):
    pass

def test_light():
    pass
"""


def run(pytester, *args):
    pytester.makeconftest(Path(conftest.__file__).read_text())
    pytester.makeini("[pytest]\nmarkers =\n    gpu: gpu\n    heavy: heavy\n    slow: slow\n")
    pytester.makepyfile(test_tiers=TESTS)
    return pytester.runpytest_inprocess("--strict-markers", "-rs", *args)


def test_the_default_run_skips_the_heavy_tier_and_says_how_to_run_it(pytester):
    result = run(pytester)
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*heavy: run with -m heavy*"])


def test_m_heavy_runs_the_heavy_tier_only(pytester):
    result = run(pytester, "-m", "heavy", "-v")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["*test_marked PASSED*", "*test_uses_a_heavy_fixture PASSED*"])


def test_the_heavy_fixtures_are_the_conftest_s_own():
    assert "tiny_built_int8" in conftest.HEAVY_FIXTURES
    assert "tiny_built" not in conftest.HEAVY_FIXTURES  # the default run's shared build
