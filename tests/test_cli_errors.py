"""No traceback reaches a CLI user: closed pipes, missing extras, internal errors; `info --verify`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sdrt import cli
from sdrt.integrity import saved_graph_files
from sdrt.manifest import component_files, read_manifest

ROOT = Path(__file__).resolve().parents[1]

# Runs sdrt.cli.main(argv) with the top-level modules in BLOCKED unimportable, as on an
# install without the extras that carry them; EXTRA_PATH, if set, is added to
# sdrt.commands' search path and COMMAND=MODULE registers one more command from there.
WRAPPER = textwrap.dedent(
    """
    import os, sys

    BLOCKED = set(filter(None, os.environ.get("BLOCKED", "").split(",")))

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED or name in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    import sdrt.cli
    import sdrt.commands

    if os.environ.get("EXTRA_PATH"):
        sdrt.commands.__path__.append(os.environ["EXTRA_PATH"])
        name, _, module = os.environ["EXTRA_COMMAND"].partition("=")
        sdrt.cli.COMMANDS[name] = module
    sys.exit(sdrt.cli.main(sys.argv[1:]))
    """
)

EXPORT = "torch,diffusers,transformers,accelerate,safetensors,onnx,onnx_graphsurgeon,polygraphy"
SERVE = "fastapi,uvicorn,prometheus_client,python_multipart,ray"
RUNTIME_ONLY = f"{EXPORT},matplotlib,psutil,rich,tensorrt,cupy,imageio_ffmpeg,{SERVE}"


def run_sdrt(args, *, blocked="", stdout=subprocess.PIPE, env=None, cwd=None):
    environ = {k: v for k, v in os.environ.items() if k != "SDRT_DEBUG"}
    environ.update(BLOCKED=blocked, **(env or {}))
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, *map(str, args)],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=cwd or ROOT,
        timeout=120,
    )


# ------------------------------------------------------------------------- missing extras


@pytest.mark.parametrize(
    "args, extra, module",
    [
        (["build", "{tmp}/model", "-o", "{tmp}/out"], "export", "torch"),
        (["init-model", "tiny", "--random-weights", "{tmp}/tiny"], "export", "(torch|diffusers)"),
        (["bench", "--arch", "tiny", "--random-weights", "-o", "{tmp}/report"], "bench", "rich"),
        (
            ["interpolate", "{tmp}/model", "a", "b", "-o", "{tmp}/walk.mp4"],
            "video",
            "imageio_ffmpeg",
        ),
        (["serve", "{tmp}/model"], "serve", "fastapi"),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_extra(tmp_path, args, extra, module):
    args = [a.format(tmp=tmp_path) for a in args]
    result = run_sdrt(args, blocked=RUNTIME_ONLY)
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(
        rf"sdrt {args[0]}: error: needs the '{extra}' extra \(pip install 'sdrt\[{extra}\]'\): "
        rf"No module named '{module}'\n",
        result.stderr,
    ), result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-made


def test_sdrt_debug_adds_the_traceback(tmp_path):
    result = run_sdrt(
        ["build", tmp_path / "model", "-o", tmp_path / "out"],
        blocked=RUNTIME_ONLY,
        env={"SDRT_DEBUG": "1"},
    )
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("sdrt build: error: needs the 'export' extra")


def test_a_command_whose_module_cannot_be_imported_leaves_the_others_working(tmp_path):
    (tmp_path / "needs_torch.py").write_text(
        'import torch\n\nHELP = "x"\n\n\ndef add_arguments(parser):\n    pass\n\n\n'
        "def run(args):\n    return 0\n"
    )
    env = {"EXTRA_PATH": str(tmp_path), "EXTRA_COMMAND": "needs-torch=needs_torch"}
    result = run_sdrt(["needs-torch", "--some", "args"], blocked="torch", env=env)
    assert result.returncode == 2
    assert result.stderr == (
        "sdrt needs-torch: error: needs the 'export' extra (pip install 'sdrt[export]'): "
        "No module named 'torch'\n"
    )
    result = run_sdrt(["info", tmp_path], blocked="torch", env=env)
    assert result.returncode == 2 and "has no sdrt.json" in result.stderr


def test_the_extra_a_command_needs_is_named_where_a_module_is_in_several():
    error = ModuleNotFoundError("No module named 'polygraphy'", name="polygraphy")
    assert "'gpu' extra" in cli.missing_module_message(error, "engines")
    assert "'export' extra" in cli.missing_module_message(error, "build")
    error = ModuleNotFoundError("No module named 'numpy'", name="numpy")
    assert "reinstall sdrt" in cli.missing_module_message(error, "info")
    error = ModuleNotFoundError("No module named 'sdrt.nothing'", name="sdrt.nothing")
    assert cli.missing_module_message(error, "info") is None


# Distribution names whose import name differs.
IMPORT_NAMES = {
    "pillow": "PIL",
    "onnx-graphsurgeon": "onnx_graphsurgeon",
    "cupy-cuda13x": "cupy",
    "tensorrt-cu13": "tensorrt",
    "onnxruntime-gpu": "onnxruntime",
    "opencv-python-headless": "cv2",
}


def _module(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def test_the_extras_table_follows_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_module(r) for r in project["dependencies"]}
    assert core == set(cli.CORE_MODULES)
    expected: dict[str, list[str]] = {}
    for extra, requirements in project["optional-dependencies"].items():
        if extra in ("dev", "docs"):
            continue  # test tools and the docs site: not needed by any command
        for module in map(_module, requirements):
            if module not in core:  # onnxruntime-gpu stands in for the core onnxruntime
                expected.setdefault(module, []).append(extra)
    assert {m: sorted(e) for m, e in expected.items()} == {
        m: sorted(e) for m, e in cli.EXTRA_MODULES.items()
    }


# ------------------------------------------------------------------------ internal errors


def test_an_unexpected_exception_is_one_line_with_exit_1(monkeypatch, capsys):
    def broken(folder):
        raise RuntimeError("something\nbroke  here")

    monkeypatch.delenv("SDRT_DEBUG", raising=False)
    monkeypatch.setattr("sdrt.manifest.read_manifest", broken)
    assert cli.main(["info", "anything"]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "sdrt info: internal error: RuntimeError: something broke here "
        "(run with SDRT_DEBUG=1 for the traceback)\n"
    )
    assert captured.out == ""


def test_sdrt_debug_shows_an_internal_error_s_traceback(monkeypatch, capsys):
    class Odd(Exception):
        pass

    def broken(folder):
        raise Odd("odd")

    monkeypatch.setenv("SDRT_DEBUG", "1")
    monkeypatch.setattr("sdrt.manifest.read_manifest", broken)
    assert cli.main(["info", "anything"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise Odd("odd")' in err
    assert err.splitlines()[-1] == f"sdrt info: internal error: {__name__}.{Odd.__qualname__}: odd"


def test_interrupted_is_130(monkeypatch, capsys):
    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr("sdrt.manifest.read_manifest", interrupted)
    assert cli.main(["info", "anything"]) == 130
    assert capsys.readouterr().err == "sdrt info: interrupted\n"


def test_usage_errors_stay_argparse_s_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", "--no-such-option", "x"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


# -------------------------------------------------------------------------- closed pipes


@pytest.fixture
def closed_pipe():
    """The write end of a pipe whose reader has gone: every write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    yield write
    os.close(write)


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("args", [["info", "{folder}"], ["info", "--verify", "{folder}"]])
def test_a_closed_stdout_exits_141_quietly(tiny_built, closed_pipe, args, unbuffered):
    args = [a.format(folder=tiny_built) for a in args]
    result = run_sdrt(args, stdout=closed_pipe, env={"PYTHONUNBUFFERED": unbuffered})
    assert result.returncode == cli.EXIT_BROKEN_PIPE
    assert "Error" not in result.stderr and "Traceback" not in result.stderr


def test_help_into_a_closed_pipe_says_nothing(closed_pipe):
    result = run_sdrt(["--help"], stdout=closed_pipe, env={"PYTHONUNBUFFERED": ""})
    assert result.returncode == cli.EXIT_BROKEN_PIPE
    assert result.stderr == ""


def test_piping_into_head(tiny_built):
    script = f"{shlex.join([sys.executable, '-m', 'sdrt', 'info', str(tiny_built)])} | head -1"
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {script}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.stdout == f"model folder   {tiny_built}\n"
    assert result.stderr == ""
    assert result.returncode in (0, cli.EXIT_BROKEN_PIPE)  # 0 where head read it all in time


def test_a_broken_pipe_that_is_not_stdout_is_an_internal_error(tmp_path):
    code = (
        "import sys, sdrt.cli, sdrt.manifest\n"
        "def broken(folder):\n"
        "    raise BrokenPipeError(32, 'Broken pipe')\n"
        "sdrt.manifest.read_manifest = broken\n"
        "sys.exit(sdrt.cli.main(['info', 'x']))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "SDRT_DEBUG"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.startswith("sdrt info: internal error: BrokenPipeError: ")


# ---------------------------------------------------------------------------- info --verify


@pytest.fixture
def copy(tiny_built, tmp_path):
    target = tmp_path / "tiny"
    shutil.copytree(tiny_built, target, ignore=shutil.ignore_patterns("engines"))
    return target


def _row(out: str, path: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"{path} "))


def test_verify_hashes_every_file(tiny_built, capsys):
    assert cli.main(["info", "--verify", str(tiny_built)]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(tiny_built)
    # 4 graphs + the text encoder's token table, and the saved ORT graphs other tests' loads wrote
    files = len(component_files(manifest)) + len(saved_graph_files(tiny_built))
    assert f"file check     all {files} files match their sha256" in out
    for comp in manifest.components.values():
        row = _row(out, comp.file)
        assert comp.sha256[:16] in row and row.endswith(" ok")
        assert row.count(comp.sha256[:16]) == 2


def test_verify_names_a_truncated_unet(copy, capsys):
    graph = copy / "unet" / "model.onnx"
    size = graph.stat().st_size
    expected = read_manifest(copy).components["unet"].sha256
    with graph.open("r+b") as f:
        f.truncate(size // 2)

    assert cli.main(["info", "--verify", str(copy)]) == 2
    captured = capsys.readouterr()
    files = len(component_files(read_manifest(copy)))
    assert f"file check     1 of {files} files do NOT match their sha256" in captured.out
    assert _row(captured.out, "unet/model.onnx").endswith("MISMATCH (truncated)")
    error = captured.err.splitlines()[-1]
    assert error.startswith(
        f"sdrt info: error: {copy}: 1 of {files} files do not match their sha256 in sdrt.json: "
        f"unet/model.onnx: expected sha256 {expected}, got "
    )
    assert f"; {size // 2} bytes where it had {size} when it last matched (truncated)" in error
    assert "text_encoder" not in error


def test_verify_names_a_changed_saved_onnx_runtime_graph(copy, capsys):
    import sdrt

    sdrt.Pipeline.load(copy, backend="ort-cpu")  # saves the optimised graphs
    (data,) = (copy / "engines" / "ort-cpu").glob("unet-*/model.onnx_data")
    rel = data.relative_to(copy).as_posix()
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 1  # one mantissa bit: the image would change, nothing fail
    data.write_bytes(bytes(content))

    assert cli.main(["info", "--verify", str(copy)]) == 2
    captured = capsys.readouterr()
    files = len(component_files(read_manifest(copy))) + len(saved_graph_files(copy))
    assert f"file check     1 of {files} files do NOT match their sha256" in captured.out
    assert _row(captured.out, rel).endswith(" MISMATCH")
    error = captured.err.splitlines()[-1]
    assert error.startswith(
        f"sdrt info: error: {copy}: 1 of {files} files do not match the sha256 recorded when "
        f"they were written: {rel}: expected sha256 "
    )
    assert error.endswith(
        "(saved ONNX Runtime graphs: the next load removes them and writes them again)"
    )
    assert data.read_bytes() == bytes(content)  # info only reports


def test_verify_names_a_missing_file(copy, capsys):
    (copy / "vae_decoder" / "model.onnx").unlink()
    assert cli.main(["info", "--verify", str(copy)]) == 2
    captured = capsys.readouterr()
    assert _row(captured.out, "vae_decoder/model.onnx").endswith("MISSING")
    assert "vae_decoder/model.onnx is missing" in captured.err


def test_plain_info_says_what_it_did_not_check(copy, capsys):
    graph = copy / "unet" / "model.onnx"
    size = graph.stat().st_size
    with graph.open("r+b") as f:
        f.truncate(1000)

    assert cli.main(["info", str(copy)]) == 0
    out = capsys.readouterr().out
    assert (
        "build check    the export's errors (ONNX Runtime vs PyTorch) measured at build time" in out
    )
    assert "file check     not done: sha256 not compared (--verify hashes every file)" in out
    assert (
        f"warning        unet/model.onnx is 1000 bytes; it had {size} when it last matched "
        "its sha256" in out
    )
    header = next(line for line in out.splitlines() if line.startswith("component     files"))
    assert header.endswith("build check")
