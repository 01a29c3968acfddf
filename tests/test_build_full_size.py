"""Full-size architectures (random weights) through sdrt build: slow, run with -m slow.

SD 1.5 takes about half an hour per precision on 2 CPU cores and ~12 GB of RAM.
"""

from __future__ import annotations

import pytest
from sdrt.export.build import BuildConfig, build

from sdrt.integrity import check_model_files
from sdrt.manifest import read_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sd15_source(tmp_path_factory):
    from sdrt.export.random_model import init_random_model

    return init_random_model("sd15", tmp_path_factory.mktemp("sd15") / "src")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_sd15_builds_and_verifies(sd15_source, precision):
    out = sd15_source.parent / f"built-{precision}"
    result = build(BuildConfig(source=str(sd15_source), output=out, precision=precision))
    manifest = read_manifest(out)
    check_model_files(out, manifest, "always")
    assert manifest.family == "sd1" and manifest.default_image_size == 512
    unet = manifest.components["unet"]
    # 860 M parameters: over 2 GB in fp32 (one external data file), under it in fp16.
    assert (unet.external_data == "unet/model.onnx_data") == (precision == "fp32")
    for comp in manifest.components.values():
        assert comp.verification.passed and comp.precision == precision
    assert all(r.action == "exported" for r in result.components)
