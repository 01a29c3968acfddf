"""Folders sdrt adopt refuses: a clear one-line error, exit 2, and nothing written."""

from __future__ import annotations

import shutil

import pytest
from adopt_helpers import RANGE, copy_export, edit_graph, poison_output, tree

from sdrt.cli import main


def _refused(args, capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err  # progress lines, then the one error line
    assert err.splitlines()[-1].startswith("sdrt adopt: error:") and "Traceback" not in err
    return err.splitlines()[-1]


def _break_missing_decoder(folder):
    shutil.rmtree(folder / "vae_decoder")


def _break_unloadable_unet(folder):
    """A well-formed graph with an operator no runtime implements."""
    from onnx import helper

    def add_unknown_op(model):
        model.opset_import.append(helper.make_opsetid("sdrt.test", 1))
        poison_output(model)
        model.graph.node[-1].op_type, model.graph.node[-1].domain = "NoSuchOp", "sdrt.test"

    edit_graph(folder / "unet" / "model.onnx", add_unknown_op)


def _break_not_onnx(folder):
    (folder / "unet" / "model.onnx").write_bytes(b"\x08\x08" + b"\xff" * 64)  # ir_version, junk


def _break_nan_unet(folder):
    edit_graph(folder / "unet" / "model.onnx", poison_output)


def _break_nan_decoder(folder):
    edit_graph(folder / "vae_decoder" / "model.onnx", poison_output)


def _break_inf_text_encoder(folder):
    edit_graph(folder / "text_encoder" / "model.onnx", lambda m: poison_output(m, float("inf")))


def _break_unet_inputs(folder):
    def rename(model):
        for node in model.graph.node:
            node.input[:] = ["hidden" if i == "encoder_hidden_states" else i for i in node.input]
        for value in model.graph.input:
            if value.name == "encoder_hidden_states":
                value.name = "hidden"

    edit_graph(folder / "unet" / "model.onnx", rename)


def _break_scheduler(folder):
    (folder / "scheduler" / "scheduler_config.json").unlink()


CASES = {
    "missing component": (_break_missing_decoder, "missing vae_decoder/model.onnx"),
    "graph that fails to load": (_break_unloadable_unet, "unet: ONNX Runtime"),
    "not an ONNX file": (_break_not_onnx, "unet/model.onnx: not a readable ONNX model"),
    "NaN-producing U-Net": (_break_nan_unet, "unet: the forward pass gave NaN or Inf in out_sample"),
    "NaN-producing VAE decoder": (_break_nan_decoder, "vae_decoder: the forward pass failed: NaN or Inf"),
    "Inf-producing text encoder": (_break_inf_text_encoder, "text_encoder: the forward pass gave NaN or Inf"),
    "U-Net input renamed": (_break_unet_inputs, "unet: expected the inputs ['sample', 'timestep', 'encoder_hidden_states']"),
    "no scheduler config": (_break_scheduler, "missing scheduler/scheduler_config.json"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_folder_is_refused_and_nothing_is_written(case, tmp_path, capsys):
    folder = copy_export(tmp_path)
    breaks, message = CASES[case]
    breaks(folder)
    before = tree(folder)
    out = tmp_path / "out"
    err = _refused(["adopt", str(folder), "-o", str(out), *RANGE], capsys)
    assert message in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["optimum"]
    err = _refused(["adopt", str(folder), "--in-place", *RANGE], capsys)
    assert message in err
    assert tree(folder) == before  # no sdrt.json, no record, no saved graphs


def test_graph_that_fails_to_load_is_named(tmp_path, capsys):
    folder = copy_export(tmp_path)
    graph = folder / "vae_encoder" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # truncated
    err = _refused(["adopt", str(folder), "-o", str(tmp_path / "out"), *RANGE], capsys)
    assert "vae_encoder" in err and ("cannot load" in err or "not a readable ONNX model" in err)


def test_output_and_in_place_are_exclusive_and_one_is_needed(tmp_path, capsys):
    folder = copy_export(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["adopt", str(folder)])
    assert stop.value.code == 2
    with pytest.raises(SystemExit):
        main(["adopt", str(folder), "--in-place", "-o", str(tmp_path / "out")])


def test_refuses_to_replace_a_folder_that_is_not_sdrts(tmp_path, capsys):
    folder = copy_export(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    err = _refused(["adopt", str(folder), "-o", str(out), *RANGE], capsys)
    assert "is not an sdrt model folder" in err and (out / "mine.txt").read_text() == "keep me"


def test_bad_range_is_an_input_error(tmp_path, capsys):
    folder = copy_export(tmp_path)
    err = _refused(["adopt", str(folder), "-o", str(tmp_path / "o"), "--min-size", "60"], capsys)
    assert "--min-size must be a positive multiple of 8 pixels, got 60" in err


def test_a_diffusers_folder_is_sent_to_sdrt_build(tiny_source, capsys):
    err = _refused(["adopt", str(tiny_source), "--in-place"], capsys)
    assert "missing text_encoder/model.onnx" in err and "export it with `sdrt build`" in err
    assert not (tiny_source / "sdrt.json").exists()
