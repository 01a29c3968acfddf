"""Load-time file checks: hash what changed since it last matched, not 4 GB every load."""

from __future__ import annotations

import json
import os
import shutil
import stat

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
    # ort-cpu saved graphs, which earlier tests' loads may have written, are recorded too
    saved = integrity.saved_graph_files(tiny_built)
    assert set(record["files"]) - set(saved) == set(component_files(manifest))
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
    saved = integrity.saved_graph_files(tiny_built)  # written by earlier tests' loads, if any
    # ``hashed`` names each file by its last folder: a saved graph's is its copy's folder
    expected = [*component_files(manifest), *(rel.split("/", 2)[2] for rel in saved)]
    assert sorted(hashed) == sorted(expected)
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


# --- external data and the saved ONNX Runtime graphs ------------------------------------------

FAST = dict(num_inference_steps=2, height=64, width=64, seed=0, output_type="np")


def _flip_bits(path, count=100):
    """Flip ``count`` low mantissa bits of float32 words in place (same size, new mtime)."""
    data = bytearray(path.read_bytes())
    step = max(4, (len(data) // count) & ~3)
    for i in range(count):
        data[(i * step) % len(data) & ~3] ^= 1 << (i % 8)
    path.write_bytes(bytes(data))


def _truncate(path):
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.fixture
def external_unet(copy):
    """The copy with its U-Net's weights in unet/model.onnx_data, as a full-size U-Net has."""
    import dataclasses

    import onnx

    from sdrt.manifest import sha256_file, write_manifest

    manifest = read_manifest(copy)
    graph = copy / "unet" / "model.onnx"
    onnx.save_model(
        onnx.load(str(graph)),
        str(graph),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx_data",
        size_threshold=1024,
    )
    unet = dataclasses.replace(
        manifest.components["unet"],
        sha256=sha256_file(graph),
        external_data="unet/model.onnx_data",
        external_data_sha256=sha256_file(graph.with_name("model.onnx_data")),
    )
    components = {**manifest.components, "unet": unet}
    write_manifest(copy, dataclasses.replace(manifest, components=components))
    check_model_files(copy, read_manifest(copy), "always")
    return copy


def test_flipped_bits_in_the_unet_s_external_data_are_refused(external_unet):
    manifest = read_manifest(external_unet)
    _flip_bits(external_unet / "unet" / "model.onnx_data")
    with pytest.raises(ModelFolderError, match=r"sha256 in sdrt.json: unet/model.onnx_data: ") as e:
        sdrt.Pipeline.load(external_unet)
    assert "unet/model.onnx:" not in str(e.value)
    assert [c.path for c in integrity.check_files(external_unet, manifest) if not c.ok] == [
        "unet/model.onnx_data"
    ]


def test_a_truncated_unet_external_data_file_is_named(external_unet):
    _truncate(external_unet / "unet" / "model.onnx_data")
    with pytest.raises(ModelFolderError, match=r"unet/model.onnx_data: .* \(truncated\)") as e:
        sdrt.Pipeline.load(external_unet)
    assert "unet/model.onnx:" not in str(e.value)


@pytest.fixture
def saved(copy):
    """The copy after a first load, which saved ONNX Runtime's optimised graphs; the U-Net's
    saved copy and the image that load made."""
    image = sdrt.Pipeline.load(copy, backend="ort-cpu")("a fox", **FAST).images[0]
    (unet_copy,) = (copy / "engines" / "ort-cpu").glob("unet-*")
    assert (unet_copy / "model.onnx_data").is_file()  # ORT writes weights over 1 KiB there
    return unet_copy, image


def test_saved_graphs_are_recorded_so_the_next_load_hashes_nothing(copy, saved, hashed):
    files = integrity.saved_graph_files(copy)
    assert f"engines/ort-cpu/{saved[0].name}/model.onnx_data" in files
    assert all(len(digest) == 64 for digest in files.values())
    sdrt.Pipeline.load(copy, backend="ort-cpu")
    assert hashed == []


@pytest.mark.parametrize("damage", [_flip_bits, _truncate])
def test_a_changed_saved_graph_is_written_again_from_the_verified_graph(
    copy, saved, damage, caplog
):
    unet_copy, image = saved
    damage(unet_copy / "model.onnx_data")
    rel = f"engines/ort-cpu/{unet_copy.name}/model.onnx_data"
    problems = [c for c in integrity.check_files(copy, read_manifest(copy)) if not c.ok]
    assert [(c.path, c.saved_graph) for c in problems] == [(rel, True)]
    with caplog.at_level("WARNING", logger="sdrt.integrity"):
        pipe = sdrt.Pipeline.load(copy, backend="ort-cpu")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert rel in warning and "ort-cpu writes it again from the verified unet/model.onnx" in warning
    assert ("(truncated)" in warning) == (damage is _truncate)
    assert pipe._session("unet").model_path == unet_copy / "model.onnx"  # written again
    assert pipe("a fox", **FAST).images[0].tobytes() == image.tobytes()
    assert all(c.ok for c in integrity.check_files(copy, read_manifest(copy)))


def test_a_saved_graph_loaded_unchecked_is_named_when_it_fails(copy, saved):
    unet_copy, _ = saved
    _truncate(unet_copy / "model.onnx_data")
    with pytest.raises(ModelFolderError) as e:
        sdrt.Pipeline.load(copy, backend="ort-cpu", verify_files="never")._session("unet")
    message = str(e.value)
    assert f"cannot load engines/ort-cpu/{unet_copy.name}/model.onnx (the saved" in message
    assert not message.split(": ONNX Runtime")[1].startswith(" cannot load unet/model.onnx:")


def test_a_saved_graph_without_recorded_sha256_is_written_again(copy, saved, caplog):
    unet_copy, _ = saved
    key = json.loads((unet_copy / "key.json").read_text())
    del key["files"]  # as sdrt wrote them before it recorded them
    (unet_copy / "key.json").write_text(json.dumps(key))
    with caplog.at_level("WARNING", logger="sdrt.integrity"):
        sdrt.Pipeline.load(copy, backend="ort-cpu")
    assert "no sha256 was recorded when it was written" in caplog.text
    assert "files" in json.loads((unet_copy / "key.json").read_text())


def test_saved_graphs_follow_the_umask(copy):
    old = os.umask(0o022)
    try:
        sdrt.Pipeline.load(copy, backend="ort-cpu")
    finally:
        os.umask(old)
    saved = list((copy / "engines").rglob("*"))
    assert saved and {oct(stat.S_IMODE(p.stat().st_mode)) for p in saved if p.is_dir()} == {
        oct(0o755)
    }
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in saved if p.is_file()} == {oct(0o644)}
