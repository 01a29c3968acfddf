"""Builds that cannot silently collide: one build per output, and no leftovers from kills.

The process tests run ``sdrt build`` in a subprocess (``build_pausing.py``) that pauses
mid-build holding the output's lock, then start a rival build, SIGTERM it or SIGKILL it.
Their builds rebuild a copy of ``tiny_built`` with ``--force``, so they reuse every
component and take seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import TINY_MAX_SIZE, TINY_MIN_SIZE
from sdrt.export import output_lock, staging
from sdrt.export.output_lock import OutputBusyError, lock_file, lock_output
from sdrt.export.staging import MARKER_NAME, commit, create_staging, discard, remove_stale

from sdrt import cli
from sdrt.integrity import check_model_files
from sdrt.manifest import MANIFEST_NAME, read_manifest

HELPER = Path(__file__).with_name("build_pausing.py")
TINY = ["--min-size", str(TINY_MIN_SIZE), "--max-size", str(TINY_MAX_SIZE)]
EXIT_USAGE = 2
WAIT_S = 120


class PausedBuild:
    """``sdrt build ARGS`` in a subprocess, paused holding the output's lock."""

    def __init__(self, folder: Path, *argv):
        self.paused, self.go = folder / "paused", folder / "go"
        env = {
            **os.environ,
            "SDRT_TEST_PAUSED": str(self.paused),
            "SDRT_TEST_GO": str(self.go),
            "HF_HUB_OFFLINE": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, str(HELPER), *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.pid = self.process.pid

    def wait_paused(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while not self.paused.exists():
            if self.process.poll() is not None:
                out, err = self.process.communicate()
                pytest.fail(f"build exited with {self.process.returncode} before pausing:\n{err}")
            if time.monotonic() > deadline:
                pytest.fail(f"build did not pause within {WAIT_S} s")
            time.sleep(0.05)

    def finish(self) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=WAIT_S)
        return self.process.returncode, out, err

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.fixture
def paused_build(tmp_path):
    started = []

    def start(*argv) -> PausedBuild:
        build = PausedBuild(tmp_path, *argv)
        started.append(build)
        return build

    yield start
    for build in started:
        build.stop()


@pytest.fixture
def out(tmp_path, tiny_built):
    """A copy of the tiny build, to rebuild with --force (every component reused)."""
    folder = tmp_path / "out"
    shutil.copytree(tiny_built, folder)
    return folder


def leftovers(output: Path) -> list[str]:
    """Partial folders and lock files of ``output`` beside it."""
    return sorted(p.name for p in output.parent.glob(f".{output.name}.*"))


# ---------------------------------------------------------------------------- processes


def test_a_second_build_of_the_same_output_fails_at_once_and_the_first_completes(
    tmp_path, capsys, paused_build, tiny_source, out
):
    first = paused_build(tiny_source, "-o", out, "--force", "--max-batch", "3", *TINY)
    first.wait_paused()
    started = time.perf_counter()
    code = cli.main(["build", str(tiny_source), "-o", str(out), "--force", "--max-batch", "2"])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and err.startswith("sdrt build: error: "), err
    assert f"output {str(out)!r} is being built by another sdrt build (pid {first.pid})" in err
    assert "Traceback" not in err
    assert seconds < 5  # refused at once, not after hashing or exporting

    first.go.touch()
    rc, stdout, stderr = first.finish()
    assert rc == 0, stderr
    assert f"built {out}" in stdout
    manifest = read_manifest(out)
    assert manifest.build.max_batch == 3  # the first build's, whole
    check_model_files(out, manifest, "always")
    assert leftovers(out) == []


def test_sigterm_removes_the_partial_build_and_keeps_the_old_output(paused_build, tiny_source, out):
    before = (out / MANIFEST_NAME).read_bytes()
    build = paused_build(tiny_source, "-o", out, "--force", "--max-batch", "3", *TINY)
    build.wait_paused()
    assert len(list(out.parent.glob(f".{out.name}.partial-*"))) == 1  # there is one to remove
    build.process.send_signal(signal.SIGTERM)
    rc, _, err = build.finish()
    assert rc == 128 + signal.SIGTERM
    # One line, the last; before it only the progress display (a pipe gets it line by line).
    lines = err.splitlines()
    assert [line for line in lines if line.startswith("sdrt")] == lines[-1:], err
    assert lines[-1] == "sdrt build: terminated by SIGTERM"
    assert "Traceback" not in err
    assert leftovers(out) == []
    assert (out / MANIFEST_NAME).read_bytes() == before


def test_the_next_build_removes_what_a_sigkilled_build_left(capsys, paused_build, tiny_source, out):
    build = paused_build(tiny_source, "-o", out, "--force", *TINY)
    build.wait_paused()
    build.process.kill()
    build.finish()
    left = list(out.parent.glob(f".{out.name}.partial-*"))
    assert len(left) == 1 and any(left[0].rglob("model_index.json"))  # half-built
    assert lock_file(out).is_file()  # a dead holder's lock file: it must not block

    code = cli.main(["build", str(tiny_source), "-o", str(out), "--force", *TINY])
    stdout = capsys.readouterr().out
    assert code == 0
    assert (
        f"removed {left[0]}, " in stdout and f"left by a stopped build (pid {build.pid})" in stdout
    )
    assert leftovers(out) == []
    check_model_files(out, read_manifest(out), "always")


def test_the_lock_is_held_through_the_targets_steps_after_the_build(
    capsys, monkeypatch, tiny_source, out
):
    from sdrt.backends import ort_saved_graphs

    rivals = []

    def save_optimized_models(folder, manifest):
        with pytest.raises(OutputBusyError) as caught, lock_output(out):
            pass
        rivals.append(str(caught.value))
        return []

    monkeypatch.setattr(ort_saved_graphs, "save_optimized_models", save_optimized_models)
    argv = ["build", str(tiny_source), "-o", str(out), "--force", "--target", "ort-cpu", *TINY]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert len(rivals) == 1 and f"(pid {os.getpid()})" in rivals[0]
    assert leftovers(out) == []


# ---------------------------------------------------------------------------- partial folders


def _marked(folder: Path, output_name: str) -> Path:
    folder.mkdir()
    marker = {"format": staging.MARKER_FORMAT, "output": output_name, "pid": 1}
    (folder / MARKER_NAME).write_text(json.dumps(marker))
    (folder / "data.bin").write_bytes(b"\0" * 100)
    return folder


def test_only_this_outputs_marked_partial_folders_are_removed(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("the output itself")
    stale = create_staging(output)
    (stale.folder / "unet.onnx").write_bytes(b"\0" * 1000)
    elsewhere = _marked(tmp_path / "elsewhere", "out")
    kept = {
        ".out.partial-zzzzzzzz": _marked(tmp_path / ".out.partial-zzzzzzzz", "out"),  # not hex
        ".out.partial-deadbeef0": _marked(tmp_path / ".out.partial-deadbeef0", "out"),  # 9 digits
        ".out.partial-0badf00d": _marked(tmp_path / ".out.partial-0badf00d", "other"),  # not ours
        ".other.partial-feedface": _marked(tmp_path / ".other.partial-feedface", "other"),
        "out.partial-deadbeef": _marked(tmp_path / "out.partial-deadbeef", "out"),  # not hidden
        ".out.old-deadbeef": _marked(tmp_path / ".out.old-deadbeef", "out"),
    }
    unmarked = tmp_path / ".out.partial-deadbeef"  # e.g. left by a build before markers
    unmarked.mkdir()
    (unmarked / "data.bin").write_bytes(b"\0")
    bad_marker = tmp_path / ".out.partial-abcdef02"
    bad_marker.mkdir()
    (bad_marker / MARKER_NAME).write_text("{not json")
    marker_folder = tmp_path / ".out.partial-abcdef03"
    (marker_folder / MARKER_NAME).mkdir(parents=True)
    old_format = _marked(tmp_path / ".out.partial-abcdef04", "out")
    (old_format / MARKER_NAME).write_text(json.dumps({"format": 0, "output": "out"}))
    (tmp_path / ".out.partial-12345678").write_text("a file, not a folder")
    (tmp_path / ".out.partial-cafebabe").symlink_to(elsewhere, target_is_directory=True)
    before = sorted(p.name for p in tmp_path.iterdir())

    removed = remove_stale(output)

    assert [r.path for r in removed] == [stale.root]
    assert removed[0].pid == os.getpid() and removed[0].size_bytes >= 1000
    assert not removed[0].restored_output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(before) - {stale.root.name})
    for folder in kept.values():
        assert (folder / "data.bin").is_file() and (folder / MARKER_NAME).is_file()
    assert (elsewhere / "data.bin").is_file()  # a symlink is never followed
    assert (output / "keep.txt").read_text() == "the output itself"
    assert remove_stale(output) == []


class Interrupted(Exception):
    pass


def test_a_build_stopped_between_its_two_renames_puts_the_old_output_back(tmp_path, monkeypatch):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    # Stopped by an exception (SIGTERM raises one) after moving the old output aside.
    first = create_staging(output)
    (first.folder / "new.txt").write_text("new")
    real_replace, calls = os.replace, []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise Interrupted
        real_replace(src, dst)

    monkeypatch.setattr(staging.os, "replace", replace_once)
    with pytest.raises(Interrupted):
        commit(first)
    monkeypatch.setattr(staging.os, "replace", real_replace)
    assert not output.exists()
    discard(first)
    assert (output / "old.txt").read_text() == "old" and not first.root.exists()
    # Stopped by SIGKILL at the same point: the next build's clean-up puts it back.
    second = create_staging(output)
    os.replace(output, second.root / staging.REPLACED_FOLDER)
    (removed,) = remove_stale(output)
    assert removed.restored_output
    assert (output / "old.txt").read_text() == "old" and not second.root.exists()


def test_commit_replaces_the_output_and_leaves_nothing_beside_it(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old")
    build = create_staging(output)
    (build.folder / "new.txt").write_text("new")
    commit(build)
    assert sorted(p.name for p in output.iterdir()) == ["new.txt"]  # no marker inside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------- the lock


def test_the_lock_is_exclusive_whatever_the_spelling_and_names_its_holder(tmp_path, monkeypatch):
    output = tmp_path / "out"
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    with lock_output(output) as held:
        assert held
        assert lock_file(output).read_text() == f"{os.getpid()}\n"
        for spelling in (output, Path("../out"), tmp_path / "link" / "out"):
            with pytest.raises(OutputBusyError) as caught, lock_output(spelling):
                pass
            message = str(caught.value)
            assert f"output {str(spelling)!r} is being built by another sdrt build" in message
            assert f"(pid {os.getpid()})" in message
        with lock_output(tmp_path / "other") as other:  # another output: another lock
            assert other
    assert not lock_file(output).exists()
    with lock_output(output) as held:  # released
        assert held


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    output = tmp_path / "out"
    lock_file(output).write_text("999999999\n")
    with lock_output(output) as held:
        assert held
        assert lock_file(output).read_text() == f"{os.getpid()}\n"
    assert not lock_file(output).exists()


def test_a_lock_file_replaced_while_taking_it_is_taken_again(tmp_path, monkeypatch):
    output = tmp_path / "out"
    path = lock_file(output)
    real_try_lock, tries = output_lock._try_lock, []

    def try_lock_then_lose_the_race(fd):
        tries.append(fd)
        if len(tries) == 1:  # a holder removed this file and another build made a new one
            path.unlink()
            path.write_text("")
        return real_try_lock(fd)

    monkeypatch.setattr(output_lock, "_try_lock", try_lock_then_lose_the_race)
    with lock_output(output) as held:
        assert held and len(tries) == 2
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_without_fcntl_or_msvcrt_the_module_imports_and_builds_run_unlocked(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl -> ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", None)
    spec = importlib.util.spec_from_file_location("output_lock_copy", output_lock.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.fcntl is None and copy.msvcrt is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with copy.lock_output(tmp_path / "out") as held:
            assert held is False
    assert "concurrent builds of" in str(caught[0].message)
    assert not lock_file(tmp_path / "out").exists()
