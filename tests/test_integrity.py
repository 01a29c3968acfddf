"""Load-time file checks: hash what changed since it last matched, not 4 GB every load."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import sdrt
import sdrt.integrity as integrity
from sdrt.errors import InputError, ModelFolderError
from sdrt.integrity import RECORD_NAME, check_model_files
from sdrt.manifest import component_files, read_manifest


@pytest.fixture
def hashed(monkeypatch):
    """The relative paths sdrt.integrity hashes, in order."""
    calls = []
    real = integrity.sha256_file

    def counting(path):
        calls.append(f"{path.parent.name}/{path.name}")  # component graphs are one level deep
        return real(path)

    monkeypatch.setattr(integrity, "sha256_file", counting)
    return calls


@pytest.fixture
def copy(tiny_built, tmp_path):
    """A copy of the tiny folder (copy2 keeps mtimes; the inodes are new)."""
    target = tmp_path / "tiny"
    shutil.copytree(tiny_built, target, ignore=shutil.ignore_patterns("engines"))
    return target


def test_build_records_its_files_so_the_first_load_hashes_nothing(tiny_built, hashed):
    manifest = read_manifest(tiny_built)
    record = json.loads((tiny_built / RECORD_NAME).read_text())
    assert set(record["files"]) == set(component_files(manifest))
    check_model_files(tiny_built, manifest, "changed")
    assert hashed == []


def test_a_copied_folder_is_hashed_once(copy, hashed):
    manifest = read_manifest(copy)
    check_model_files(copy, manifest, "changed")
    assert sorted(hashed) == sorted(component_files(manifest))
    hashed.clear()
    check_model_files(copy, manifest, "changed")
    assert hashed == []


def test_a_file_written_in_place_is_hashed_and_refused(copy, hashed):
    manifest = read_manifest(copy)
    check_model_files(copy, manifest, "changed")
    hashed.clear()
    graph = copy / manifest.components["vae_decoder"].file
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # same size, other content, a new mtime
    graph.write_bytes(bytes(data))
    with pytest.raises(
        ModelFolderError, match=r"do not match their sha256 .*vae_decoder/model.onnx"
    ):
        check_model_files(copy, manifest, "changed")
    assert hashed == ["vae_decoder/model.onnx"]


def test_a_replaced_file_with_the_same_content_is_hashed_and_accepted(copy, hashed):
    manifest = read_manifest(copy)
    check_model_files(copy, manifest, "changed")
    graph = copy / manifest.components["unet"].file
    replacement = graph.with_name("replacement")
    shutil.copy2(graph, replacement)
    os.replace(replacement, graph)  # a new inode, the same bytes and mtime
    hashed.clear()
    check_model_files(copy, manifest, "changed")
    assert hashed == ["unet/model.onnx"]


def test_always_hashes_everything_and_never_hashes_nothing(tiny_built, hashed):
    manifest = read_manifest(tiny_built)
    check_model_files(tiny_built, manifest, "always")
    assert sorted(hashed) == sorted(component_files(manifest))
    hashed.clear()
    check_model_files(tiny_built, manifest, "never")
    check_model_files(tiny_built, manifest, False)
    assert hashed == []


def test_a_damaged_record_means_hashing_again(copy, hashed):
    manifest = read_manifest(copy)
    (copy / RECORD_NAME).write_text("{not json")
    check_model_files(copy, manifest, "changed")
    assert len(hashed) == len(component_files(manifest))
    assert json.loads((copy / RECORD_NAME).read_text())["format"] == integrity.RECORD_FORMAT


def test_a_record_that_cannot_be_written_is_not_an_error(copy, hashed, monkeypatch):
    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(integrity, "atomic_write", read_only)
    manifest = read_manifest(copy)
    check_model_files(copy, manifest, "changed")
    check_model_files(copy, manifest, "changed")
    assert len(hashed) == 2 * len(component_files(manifest))


def test_missing_files_are_refused_in_every_mode(copy):
    manifest = read_manifest(copy)
    (copy / manifest.components["text_encoder"].file).unlink()
    for mode in integrity.VERIFY_MODES:
        with pytest.raises(ModelFolderError, match=r"missing: text_encoder/model.onnx"):
            check_model_files(copy, manifest, mode)


def test_an_unknown_mode_names_the_modes(tiny_built):
    with pytest.raises(InputError, match=r"expected one of changed, always, never .*'sometimes'"):
        sdrt.Pipeline.load(tiny_built, verify_files="sometimes")


@pytest.fixture
def readings(monkeypatch):
    """How often a folder's sdrt.json is read and its file list made, per kind."""
    counts = {"read_manifest": 0, "component_files": 0}
    for name in counts:
        real = getattr(integrity, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(integrity, name, counting)
    return counts


def test_a_load_reads_the_folder_once(tiny_built, readings):
    """sdrt.json read once and its files listed once, in one pass (sdrt.integrity)."""
    pipe = sdrt.Pipeline.load(tiny_built, backend="ort-cpu")
    assert readings == {"read_manifest": 1, "component_files": 1}
    assert pipe.manifest == read_manifest(tiny_built)


def test_open_model_folder_names_a_missing_file(copy, hashed):
    manifest = read_manifest(copy)
    (copy / manifest.components["unet"].file).unlink()
    with pytest.raises(ModelFolderError, match="missing: unet/model.onnx"):
        integrity.open_model_folder(copy, "always")
    assert hashed == []  # refused before hashing anything


def test_open_model_folder_checks_the_mode_before_the_folder(tmp_path):
    with pytest.raises(InputError, match="verify_files: expected one of"):
        integrity.open_model_folder(tmp_path / "none", "sometimes")
