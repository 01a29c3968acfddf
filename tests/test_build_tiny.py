"""sdrt build on the tiny random model: the folder, its manifest and the export's parity."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from sdrt.export.verify import FP32_THRESHOLDS

from sdrt.integrity import check_model_files
from sdrt.manifest import (
    manifest_from_dict,
    manifest_to_dict,
    read_manifest,
    sha256_file,
)

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
# Optimum's ONNX names: what its ORT pipelines feed and read.
OPTIMUM_IO = {
    "text_encoder": (["input_ids"], ["last_hidden_state", "pooler_output"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_decoder": (["latent_sample"], ["sample"]),
    "vae_encoder": (["sample"], ["latent_sample", "latent_parameters"]),
}


def test_folder_has_optimum_layout(tiny_built, tiny_source):
    for name in COMPONENTS:
        assert (tiny_built / name / "model.onnx").is_file()
        assert (tiny_built / name / "config.json").is_file()
        data = tiny_built / name / "model.onnx_data"
        if name.startswith("text_encoder"):  # only the token-embedding table, read at run time
            vocab, width = read_manifest(tiny_built).components[name].token_embedding.shape
            assert data.stat().st_size == vocab * width * 4
        else:
            assert not data.exists()  # tiny: far below 2 GB
    for name in ("tokenizer", "scheduler"):
        for file in (tiny_source / name).iterdir():
            assert (tiny_built / name / file.name).read_bytes() == file.read_bytes()
    index = json.loads((tiny_built / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert not list(tiny_built.parent.glob(".tiny.partial-*"))


def test_manifest_round_trips_and_hashes_match(tiny_built):
    manifest = read_manifest(tiny_built)
    assert manifest_from_dict(manifest_to_dict(manifest)) == manifest
    check_model_files(tiny_built, manifest, "always")
    for name in COMPONENTS:
        comp = manifest.components[name]
        assert sha256_file(tiny_built / comp.file) == comp.sha256
        assert comp.precision == "fp32"
        assert comp.node_counts["cleaned"] < comp.node_counts["exported"]
    assert manifest.family == "sd1"
    assert manifest.prediction_type == "epsilon"
    assert manifest.vae_scale_factor == 8
    assert manifest.build.size_multiple == 8
    assert manifest.tokenizers == ("tokenizer",)


def test_io_names_and_dtypes(tiny_built):
    manifest = read_manifest(tiny_built)
    for name, (inputs, outputs) in OPTIMUM_IO.items():
        session = ort.InferenceSession(str(tiny_built / name / "model.onnx"))
        assert [i.name for i in session.get_inputs()] == inputs
        assert [o.name for o in session.get_outputs()] == outputs
        comp = manifest.components[name]
        assert [s.name for s in comp.inputs] == inputs
        assert [s.name for s in comp.outputs] == outputs
    unet = manifest.components["unet"]
    specs = {s.name: s for s in unet.inputs}
    assert specs["timestep"].shape == ("steps",)
    assert specs["timestep"].dtype == "float32"
    assert specs["sample"].shape[0] == "batch"
    assert manifest.components["text_encoder"].inputs[0].dtype == "int64"
    # the encoder's mode keeps a static channel count (the latent channels), as the decoder's input
    encoder_outputs = {s.name: s.shape for s in manifest.components["vae_encoder"].outputs}
    decoder_input = manifest.components["vae_decoder"].inputs[0].shape
    assert encoder_outputs["latent_sample"] == ("batch", 4, "latent_height", "latent_width")
    assert encoder_outputs["latent_sample"][1] == decoder_input[1]
    assert encoder_outputs["latent_parameters"][1] == 8


def test_verification_passed_at_two_shapes(tiny_built):
    manifest = read_manifest(tiny_built)
    for name in COMPONENTS:
        check = manifest.components[name].verification
        assert check.passed
        assert len(check.cases) == 2
        first, second = (dict(c.input_shapes) for c in check.cases)
        assert first != second
        assert check.max_rel_error <= FP32_THRESHOLDS.rel


@pytest.mark.parametrize(
    ("batch", "latent_height", "latent_width"), [(2, 8, 8), (1, 9, 8), (3, 11, 13)]
)
def test_unet_length_one_timestep_broadcasts(tiny_built, batch, latent_height, latent_width):
    # Optimum feeds one timestep for the whole (guided) batch; any multiple of 8 px works.
    session = ort.InferenceSession(str(tiny_built / "unet" / "model.onnx"))
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((batch, 4, latent_height, latent_width), dtype=np.float32)
    hidden = rng.standard_normal((batch, 77, 32), dtype=np.float32)
    one = session.run(
        None,
        {
            "sample": sample,
            "timestep": np.array([500.0], np.float32),
            "encoder_hidden_states": hidden,
        },
    )[0]
    per_sample = session.run(
        None,
        {
            "sample": sample,
            "timestep": np.full(batch, 500.0, np.float32),
            "encoder_hidden_states": hidden,
        },
    )[0]
    assert one.shape == sample.shape
    np.testing.assert_array_equal(one, per_sample)


def test_info_prints_the_manifest_as_tables(tiny_built, capsys):
    from sdrt import cli

    assert cli.main(["info", str(tiny_built)]) == 0
    out = capsys.readouterr().out
    manifest = read_manifest(tiny_built)
    assert "family         sd1, prediction epsilon, default size 64 px (sizes 64..256 px" in out
    assert "sizes 64..256 px (opt 64, multiple of 8)" in out
    for name, comp in manifest.components.items():
        row = next(
            line for line in out.splitlines() if line.startswith(f"{name} ") and ".onnx" in line
        )
        assert comp.file in row and "fp32" in row and "passed" in row
        assert f"{comp.verification.max_abs_error:.3g}" in row
    assert "unet          in   timestep               float32  [steps]" in out
    assert "engines        none built" in out


def test_info_on_a_folder_without_manifest(tmp_path, capsys):
    from sdrt import cli

    assert cli.main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdrt info: error:") and "has no sdrt.json" in err
