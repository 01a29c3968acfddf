"""`sdrt serve` before it serves: host and port checked by binding them, the API key from
its flag, a file or the environment (never silently empty), the warning for listening
beyond loopback without a key. Each failure is one error line and exit 2, and nothing is
loaded first."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from sdrt.cli import build_parser, main  # noqa: E402
from sdrt.commands.serve import config_from_args  # noqa: E402
from sdrt.service.listen import exposure_warning  # noqa: E402


@pytest.fixture
def loads(monkeypatch):
    """The folders sdrt serve loaded or served (none, when it fails at its arguments)."""
    import sdrt.pipeline
    import sdrt.service.server

    seen = []

    def serve(config, state=None, sock=None):
        seen.append(config.folder)
        sock.close()
        return 0

    monkeypatch.setattr(sdrt.pipeline.Pipeline, "load", lambda folder, **_: seen.append(folder))
    monkeypatch.setattr(sdrt.service.server, "serve", serve)
    monkeypatch.delenv("SDRT_API_KEY", raising=False)
    return seen


def _one_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and captured.out == "", captured
    assert lines[0].startswith("sdrt serve: error: "), lines
    return lines[0][len("sdrt serve: error: ") :]


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("replicas", ["0", "2"])
def test_a_port_in_use_is_one_error_line(tiny_built, busy_port, loads, capsys, replicas):
    argv = ["serve", str(tiny_built), "--port", str(busy_port), "--replicas", replicas]
    assert main(argv) == 2
    assert _one_error(capsys) == (
        f"--port: expected a free port, got {busy_port}: already in use on 127.0.0.1"
    )
    assert loads == []


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--port", "99999", "--port: expected an integer from 0 to 65535, got 99999"),
        ("--port", "-1", "--port: expected an integer from 0 to 65535, got -1"),
        (
            "--host",
            "999.1.1.1",
            "--host: expected an IP address or a host name of this machine, got '999.1.1.1'",
        ),
        ("--host", "192.0.2.1", "--host: expected an address of this machine, got '192.0.2.1'"),
    ],
)
def test_a_bad_host_or_port_is_one_error_line(tiny_built, loads, capsys, option, value, message):
    assert main(["serve", str(tiny_built), option, value]) == 2
    assert _one_error(capsys).startswith(message)
    assert loads == []


def test_the_port_given_is_the_port_announced(tiny_built, loads, capsys):
    assert main(["serve", str(tiny_built), "--port", "0"]) == 0
    err = capsys.readouterr().err
    assert "sdrt serve: listening on http://127.0.0.1:" in err
    assert ":0\n" not in err  # the port really bound, not the one asked for
    assert loads == [tiny_built]


# ---------------------------------------------------------------------------- the API key


def _config(folder, *options):
    return config_from_args(build_parser().parse_args(["serve", str(folder), *options]))


@pytest.mark.parametrize("key", ["", "   ", "\t\n"])
def test_an_empty_api_key_is_an_error_not_an_open_server(tiny_built, loads, capsys, key):
    assert main(["serve", str(tiny_built), "--api-key", key]) == 2
    assert _one_error(capsys).startswith(
        "--api-key: expected a non-empty API key, got an empty one"
    )
    assert loads == []


def test_an_empty_key_in_the_environment_is_an_error(tiny_built, loads, capsys, monkeypatch):
    monkeypatch.setenv("SDRT_API_KEY", "")
    assert main(["serve", str(tiny_built)]) == 2
    assert _one_error(capsys).startswith("$SDRT_API_KEY: expected a non-empty API key")
    assert loads == []


def test_the_api_key_comes_from_a_flag_a_file_or_the_environment(tiny_built, tmp_path, monkeypatch):
    monkeypatch.delenv("SDRT_API_KEY", raising=False)
    assert _config(tiny_built).api_key is None
    assert _config(tiny_built, "--api-key", " k1 ").api_key == "k1"
    key_file = tmp_path / "key"
    key_file.write_text("k2\n")
    assert _config(tiny_built, "--api-key-file", str(key_file)).api_key == "k2"
    monkeypatch.setenv("SDRT_API_KEY", "k3")
    assert _config(tiny_built).api_key == "k3"
    assert _config(tiny_built, "--api-key-file", str(key_file)).api_key == "k2"  # flag first


def test_a_bad_key_file_is_one_error_line(tiny_built, tmp_path, loads, capsys):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["serve", str(tiny_built), "--api-key-file", str(empty)]) == 2
    assert _one_error(capsys).startswith("--api-key-file: expected a non-empty API key")
    missing = tmp_path / "missing"
    assert main(["serve", str(tiny_built), "--api-key-file", str(missing)]) == 2
    assert _one_error(capsys) == (
        f"--api-key-file: expected a readable UTF-8 text file, got {str(missing)!r} "
        "(No such file or directory)"
    )
    with pytest.raises(SystemExit) as usage:  # argparse: not both
        main(["serve", str(tiny_built), "--api-key", "k", "--api-key-file", str(empty)])
    assert usage.value.code == 2
    assert loads == []


@pytest.mark.parametrize(
    "address, key, warned",
    [
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("192.168.1.5", None, True),
        ("0.0.0.0", "k", False),
        ("127.0.0.1", None, False),
        ("127.0.0.2", None, False),
        ("::1", None, False),
    ],
)
def test_listening_beyond_loopback_without_a_key_warns(address, key, warned):
    warning = exposure_warning(address, key)
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith(f"warning: listening on {address} without an API key")


def test_the_warning_is_printed_once_on_one_line(tiny_built, loads, capsys):
    # bound, never listening: nothing can connect while the test runs
    assert main(["serve", str(tiny_built), "--host", "0.0.0.0", "--port", "0"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "sdrt serve: warning: listening on 0.0.0.0 without an API key: anyone who can reach "
        "it may generate images (set --api-key-file or SDRT_API_KEY)"
    ]
