"""reports/README.md indexes every committed report, and its links lead to files."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"
INDEX = REPORTS / "README.md"
# What the tools write: `sdrt bench` and the studies (report.md/.json), `sdrt loadtest`.
REPORT_FILES = ("report.md", "report.json", "loadtest.md")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def linked_paths() -> list[Path]:
    return [(REPORTS / target).resolve() for target in LINK.findall(INDEX.read_text("utf-8"))]


def test_every_report_folder_is_linked_from_the_index():
    folders = sorted(
        {
            path.relative_to(REPORTS).parts[0]
            for name in REPORT_FILES
            for path in REPORTS.rglob(name)
        }
    )
    assert folders, "no reports found"
    linked = {p.relative_to(REPORTS).parts[0] for p in linked_paths() if p.is_relative_to(REPORTS)}
    missing = [folder for folder in folders if folder not in linked]
    assert not missing, f"reports/README.md does not link these report folders: {missing}"


def test_every_link_in_the_index_leads_to_a_file():
    broken = [str(path.relative_to(ROOT)) for path in linked_paths() if not path.is_file()]
    assert not broken, f"reports/README.md links to missing files: {broken}"
