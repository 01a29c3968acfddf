"""`sdrt serve --replicas 2` on Ray Serve, on the tiny model, inside a private network
namespace (only loopback: Ray listens on every interface, so it runs nowhere else).
tests/ray_replicas_driver.py runs the server and the traffic there; this judges what it saw.
Needs the ray extra and the right to make a network namespace (root); skipped otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("ray.serve")

DRIVER = Path(__file__).parent / "ray_replicas_driver.py"
DRIVER_TIMEOUT = 500  # s: Ray's start, two replicas, 12-36 requests, a drain of up to 150 s
PRIVATE = [sys.executable, "-m", "sdrt.benchmarks.private_network", "--"]


def _in_private_network(*command, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([*PRIVATE, *command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def private_network():
    probe = _in_private_network(sys.executable, "-c", "pass")
    if probe.returncode != 0:
        pytest.skip(f"no private network namespace here: {probe.stderr.strip()}")


def test_a_private_network_has_loopback_only_and_it_is_up(private_network):
    code = (
        "import socket\n"
        "print([name for _, name in socket.if_nameindex()])\n"
        "server = socket.create_server(('0.0.0.0', 0))\n"
        "socket.create_connection(('127.0.0.1', server.getsockname()[1]), timeout=5).close()\n"
        "print('connected')\n"
    )
    run = _in_private_network(sys.executable, "-c", code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["['lo']", "connected"]


@pytest.mark.heavy
def test_two_ray_replicas_serve_the_pipeline_s_images_and_drain_on_sigterm(
    private_network, tiny_built, tmp_path
):
    result_file = tmp_path / "result.json"
    run = _in_private_network(
        sys.executable, str(DRIVER), str(tiny_built), str(result_file), timeout=DRIVER_TIMEOUT
    )
    assert result_file.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(result_file.read_text())
    log = result["log_tail"]
    assert run.returncode == 0, run.stderr[-3000:] + log

    answers = result["answers"]
    assert len(answers) >= 12, answers
    assert [a["status"] for a in answers] == [200] * len(answers), answers
    # Every image is the one the Pipeline makes for its seed, whichever replica made it.
    assert all(a["max_abs_diff"] == 0 for a in answers), answers
    replicas = {a["replica"] for a in answers}
    assert len(replicas) == 2 and None not in replicas, answers

    bad = result["bad_request"]
    assert bad["status"] == 400 and bad["body"]["error"]["param"] == "size", bad
    assert "sdrt_images_total" in result["metrics"]

    drain = result["drain"]  # SIGTERM came once its first progress event had
    assert drain["status"] == 200 and drain["error"] is None, (drain, log)
    assert drain["last_event"] == "image_generation.completed", (drain, log)
    assert drain["ended_after_sigterm_s"] > 0, drain
    assert drain["readyz_while_draining"] == 503, drain
    late = drain["late_request"]
    assert late["status"] == 503 and late["body"]["error"]["code"] == "draining", late
    assert result["exit_status"] == 0, log
