"""The wheel a user installs: built as `pip wheel` builds it, installed into a bare venv.

The editable checkout hides what a user meets (a subpackage left out of the wheel still
imports from the checkout), so the runtime is run here from a fresh venv that holds the
wheel and its runtime dependencies only, outside the checkout. One wheel per module: the
builder is the GPU carry script's (``gpu_carry.build_wheel``), so the GPU machine gets what
this checks. Takes a minute or two (a venv, pip, a tiny generation, a server start).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sdrt.benchmarks.gpu_carry import build_wheel

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import call, free_port, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The checkout's folders and the import names they have in the wheel (setup.py's ROOTS).
FOLDERS = {
    "sdrt": "sdrt",
    "export": "sdrt/export",
    "engines": "sdrt/engines",
    "benchmarks": "sdrt/benchmarks",
}
BUILD_ONLY = ("torch", "diffusers", "transformers")
PROMPT = "a red fox in snow"
SETTINGS = {"num_inference_steps": 2, "height": 64, "width": 64, "seed": 3}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(ROOT, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def bare_venv(wheel, tmp_path_factory) -> Path:
    """A venv with the wheel and nothing else but its runtime dependencies (no extras)."""
    home = tmp_path_factory.mktemp("bare-venv")
    venv.create(home / "venv", with_pip=True)
    pip(home / "venv", "install", str(wheel))
    return home / "venv"


def pip(env: Path, *args: str) -> None:
    # constraints.txt: the versions the suite passed with (and what pip's cache holds).
    command = [str(env / "bin" / "python"), "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*command, *args, "--constraint", str(ROOT / "constraints.txt")], check=True)


def run_in(env: Path, cwd: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """A command of the venv, away from the checkout (cwd elsewhere, no PYTHONPATH)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        args, cwd=cwd, env=clean, capture_output=True, text=True, timeout=600, **kwargs
    )


def test_wheel_holds_every_package_of_the_checkout(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [
        (Path(target) / init.relative_to(ROOT / folder)).as_posix()
        for folder, target in FOLDERS.items()
        for init in (ROOT / folder).rglob("__init__.py")
    ]
    assert len(expected) >= len(FOLDERS)
    missing = [name for name in expected if name not in names]
    assert not missing, f"packages of the checkout missing from {wheel.name}: {missing}"
    assert "sdrt/export/data/bpe_corpus.txt" in names  # package data (init-model's tokenizer)


def test_wheel_runs_without_extras(bare_venv, tiny_built, tmp_path):
    python = str(bare_venv / "bin" / "python")
    found = run_in(bare_venv, tmp_path, python, "-c", (
        "import importlib.util, sdrt; print(sdrt.__file__); "
        f"print([m for m in {BUILD_ONLY!r} if importlib.util.find_spec(m)])"
    ))  # fmt: skip
    assert found.returncode == 0, found.stderr
    location, build_only = found.stdout.splitlines()
    assert Path(location).is_relative_to(bare_venv), f"sdrt imported from {location}"
    assert build_only == "[]", f"the bare install holds {build_only}"

    cli = run_in(
        bare_venv, tmp_path, str(bare_venv / "bin" / "sdrt"), "generate", str(tiny_built),
        PROMPT, "-o", "cli.png", "--steps", "2", "--size", "64", "--seed", "3",
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    script = (
        f"import sdrt; pipe = sdrt.load({str(tiny_built)!r}); "
        f"pipe({PROMPT!r}, output_type='pil', **{SETTINGS!r}).images[0].save('api.png')"
    )
    api = run_in(bare_venv, tmp_path, python, "-c", script)
    assert api.returncode == 0, api.stderr

    # The checkout's runtime gives the same pixels: the wheel is that code, all of it.
    import sdrt

    expected = np.asarray(sdrt.load(tiny_built)(PROMPT, **SETTINGS).images[0])
    for name in ("cli.png", "api.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / name)), expected)


def test_wheel_serves_with_the_serve_extra(bare_venv, wheel, tiny_built, tmp_path):
    pip(bare_venv, "install", f"{wheel}[serve]")
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    server = subprocess.Popen(
        [str(bare_venv / "bin" / "sdrt"), "serve", str(tiny_built), "--port", str(port)],
        cwd=tmp_path, env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: ready(port) or server.poll() is not None, timeout=300, interval=0.5)
        assert server.poll() is None, server.stdout.read()
        body = {"prompt": PROMPT, "size": "64x64", "num_inference_steps": 2, "seed": 3}
        assert call(port, "POST", "/v1/images/generations", body).status == 200
    finally:
        server.send_signal(signal.SIGTERM)  # drains, then exits 0
        code = server.wait(timeout=60)
    assert code == 0, server.stdout.read()


def ready(port: int) -> bool:
    try:
        return call(port, "GET", "/readyz", timeout=2).status == 200
    except OSError:
        return False
