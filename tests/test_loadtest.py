"""`sdrt loadtest` against a real server on 127.0.0.1 (tiny model): a report with every
request, 429s under overload, no accepted request lost or wrong. Bounded: <= 16 requests."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from serve_helpers import ThreadServer  # noqa: E402

from sdrt.cli import main  # noqa: E402
from sdrt.service.config import ServeConfig  # noqa: E402
from sdrt.service.state import ServiceState  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_built):
    with ThreadServer(ServiceState(ServeConfig(folder=tiny_built, max_queue=1))) as s:
        yield s.wait_ready()


def test_loadtest_under_overload_writes_its_report(server, tiny_built, tmp_path):
    out = tmp_path / "report"
    args = [
        "loadtest",
        f"http://127.0.0.1:{server.port}",
        "--concurrency",
        "8",
        "--requests",
        "16",
        "--size",
        "64x64",
        "--steps",
        "20",
        "--no-retry-after",
        "--check",
        str(tiny_built),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    report = json.loads((out / "loadtest.json").read_text())
    summary = report["summary"]
    assert summary["sent"] == 16 and len(report["requests"]) == 16
    assert set(summary["statuses"]) <= {"200", "429"} and "429" in summary["statuses"]
    assert summary["lost"] == 0 and summary["wrong"] == 0 and summary["accepted"] >= 2
    assert {"p50", "p95", "p99"} <= set(summary["latency_s"]["ok"])
    assert "api_key" not in report["settings"]
    markdown = (out / "loadtest.md").read_text()
    assert "| requests sent | 16 |" in markdown and "latency of ok requests" in markdown
    assert (out / "loadtest-latency.png").stat().st_size > 0


def test_loadtest_names_a_bad_url(capsys):
    assert main(["loadtest", "ftp://127.0.0.1"]) == 2
    assert "URL: expected http://HOST[:PORT]" in capsys.readouterr().err


def test_an_earlier_report_is_kept_without_force(tmp_path, capsys, monkeypatch):
    from sdrt.benchmarks import loadtest

    def run_load(*args, **kwargs):
        raise AssertionError("the load was sent before the output was checked")

    monkeypatch.setattr(loadtest, "run_load", run_load)
    (tmp_path / "loadtest.md").write_text("an earlier report")
    assert main(["loadtest", "http://127.0.0.1:9", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"sdrt loadtest: error: -o: {str(tmp_path / 'loadtest.md')!r} already exists; pass "
        "--force to replace it\n"
    )
    assert (tmp_path / "loadtest.md").read_text() == "an earlier report"
