"""benchmarks/studies/: every study is indexed in its README (with where its result is), the
index names only studies that exist and links only files that exist, and each imports."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

STUDIES = Path(__file__).resolve().parents[1] / "benchmarks" / "studies"
MODULES = sorted(p.stem for p in STUDIES.glob("*.py") if p.stem != "__init__")


def index_rows() -> dict[str, str]:
    """{study module: its row} from the index's table."""
    rows = {}
    for line in (STUDIES / "README.md").read_text(encoding="utf-8").splitlines():
        found = re.match(r"\| `(\w+)\.py` \|", line)
        if found:
            rows[found.group(1)] = line
    return rows


def test_the_studies_are_the_one_off_measurements():
    assert {"deep_cache_cost", "int8_cost", "tiny_vae_cost", "tome_cost"} <= set(MODULES)


def test_every_study_has_one_index_row_and_every_row_a_study():
    rows = index_rows()
    assert sorted(rows) == MODULES


def test_the_index_links_files_that_exist():
    for name, row in index_rows().items():
        cells = row.split(" | ")
        assert len(cells) == 3 and all(c.strip(" |") for c in cells), row
        for target in re.findall(r"\]\(([^)]+)\)", row):
            assert (STUDIES / target).resolve().is_file(), f"{name}: {target}"


@pytest.mark.parametrize("name", MODULES)
def test_a_study_imports_from_its_package(name):
    module = importlib.import_module(f"sdrt.benchmarks.studies.{name}")
    assert callable(module.main)
    assert f"python -m sdrt.benchmarks.studies.{name}" in module.__doc__  # its usage line
