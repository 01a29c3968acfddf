"""mkdocs hook: the committed benchmark reports (``reports/``) as pages of the docs site.

The docs link to reports as the repository holds them (``../reports/NAME/report.md``), so
the links also work when the Markdown is read on its own. Here those files become part of
the site under ``reports/``, and ``mkdocs build --strict`` checks every such link. A
report's own links to what stays on the machine that made it (its images, logs) turn into
plain text: only the files .gitignore lets in are published.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"
# .gitignore's whitelist for reports/: what a report folder commits.
COMMITTED = (
    "README.md",
    "*/report.md",
    "*/report.json",
    "*/charts/stages.png",
    "*/*/loadtest.md",
    "*/*/loadtest.json",
    "*/*/loadtest-latency.png",
)
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def on_files(files, config):
    for pattern in COMMITTED:
        for path in sorted(REPORTS.glob(pattern)):
            src_uri = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    src_uri = page.file.src_uri
    in_reports = src_uri.startswith("reports/")
    # Where the page lives in the repository, against where it lives in the site.
    repo_dir = posixpath.dirname(src_uri if in_reports else f"docs/{src_uri}")
    site_dir = posixpath.dirname(src_uri)

    def relink(match: re.Match) -> str:
        bang, text, target = match.groups()
        if "://" in target or target.startswith(("#", "mailto:")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(repo_dir, path))
        if repo_path.startswith("docs/"):
            site_path = repo_path.removeprefix("docs/")
        elif repo_path.startswith("reports/"):
            site_path = repo_path
        else:
            return match.group(0)  # left for mkdocs to judge
        if in_reports and files.get_file_from_path(site_path) is None:
            return text if not bang else f"*{text or site_path} (not committed)*"
        relative = posixpath.relpath(site_path, site_dir or ".")
        return f"{bang}[{text}]({relative}{'#' + anchor if anchor else ''})"

    return LINK.sub(relink, markdown)
