"""Adaptable weights: the weights run-time LoRA changes, exported as overridable initializers.

An ONNX initializer that is also listed as a graph input keeps its value as a default but
may be fed at run time; ONNX Runtime then treats it as a variable (no constant folding or
pre-packing of that one weight), and a session fed nothing runs on the defaults. The
legacy exporter folds an ``nn.Linear``'s W^T into an anonymous initializer, so before the
export every targeted Linear is swapped for an ``_AdaptableLinear`` computing
``x @ weight_t + bias`` with a parameter named after the module: the initializer then has a
predictable name and the graph is numerically the same. 1x1 Convs (SD 1.x's proj_in and
proj_out) keep their own ``weight`` parameter, which the exporter names as it is.

What LoRA touches in practice (diffusers' and kohya's default targets): in the U-Net, the
Linear layers and 1x1 Convs inside the transformer blocks (``*.attentions.*``); in the CLIP
text encoders, the encoder layers' q/k/v/out_proj and fc1/fc2. ResNet convolutions stay
constants: ONNX Runtime's CPU convolution layout transform needs constant weights.
"""

from __future__ import annotations

import re

import onnx
import torch

from sdrt.manifest import AdaptableWeight

# Bump when what is exposed, or how it is recorded, changes: invalidates reused components.
ADAPTABLE_FORMAT = 1
# The module names (relative to the diffusers/transformers model) whose weights are exposed.
UNET_TARGET = re.compile(r"^(down_blocks|mid_block|up_blocks)\..*\battentions\.\d+\.")
# transformers 5's CLIPTextModel has no ``text_model.`` level; older ones (and files) do.
TEXT_ENCODER_TARGET = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.")
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


class _AdaptableLinear(torch.nn.Module):
    """``nn.Linear`` as ``x @ weight_t + bias``: the exporter names the weight after us."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight_t = torch.nn.Parameter(linear.weight.detach().t().contiguous())
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach())

    def forward(self, x):
        y = torch.matmul(x, self.weight_t)
        return y if self.bias is None else y + self.bias


def target_pattern(component: str) -> re.Pattern | None:
    if component == "unet":
        return UNET_TARGET
    if component.startswith("text_encoder"):
        return TEXT_ENCODER_TARGET
    return None


def make_adaptable(model: torch.nn.Module, prefix: str, component: str) -> dict[str, str]:
    """Swap the targeted Linears of ``model`` (in place) for named ones; return
    module name -> the initializer name the export will give its weight. ``prefix`` is the
    model's attribute path in the export wrapper ("unet", "model")."""
    pattern = target_pattern(component)
    if pattern is None:
        return {}
    targets: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if not pattern.match(name):
            continue
        if isinstance(module, torch.nn.Linear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, _AdaptableLinear(module))
            targets[name] = f"{prefix}.{name}.weight_t"
        elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):
            targets[name] = f"{prefix}.{name}.weight"
    return targets


def expose_initializers(model: onnx.ModelProto, targets: dict[str, str]) -> list[AdaptableWeight]:
    """List each target's initializer as a graph input too (in place); the map recorded in
    sdrt.json. A target whose initializer the export did not keep by name is an error:
    the map must cover exactly what the graph can take."""
    initializers = {t.name: t for t in model.graph.initializer}
    missing = sorted(n for n in targets.values() if n not in initializers)
    if missing:
        raise RuntimeError(
            f"adaptable weights: the exported graph has no initializers {missing[:5]} "
            f"({len(missing)} of {len(targets)}); the exporter renamed or folded them"
        )
    already = {i.name for i in model.graph.input}
    weights = []
    for module, name in sorted(targets.items()):
        tensor = initializers[name]
        dtype = _ONNX_DTYPES.get(tensor.data_type)
        if dtype is None:
            raise RuntimeError(f"adaptable weight {name}: unexpected ONNX type {tensor.data_type}")
        if name not in already:
            model.graph.input.append(
                onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
            )
        layout = "transposed" if name.endswith(".weight_t") else "conv1x1"
        weights.append(AdaptableWeight(module, name, layout, tuple(tensor.dims), dtype))
    return weights


def adapt_wrapper(wrapper: torch.nn.Module, component: str) -> dict[str, str]:
    """``make_adaptable`` on the model inside a components.py export wrapper."""
    for attribute in ("unet", "model"):  # UNetExport.unet, TextEncoderExport.model
        model = getattr(wrapper, attribute, None)
        if isinstance(model, torch.nn.Module):
            return make_adaptable(model, attribute, component)
    return {}


def locate_initializers(
    onnx_file, folder_name: str, weights: list[AdaptableWeight]
) -> list[AdaptableWeight]:
    """Each weight with the file and byte offset of its raw data, as saved: external data
    records its own offset; data inside the graph is found by searching the file for its
    bytes in initializer order (one pass: protobuf writes them in that order). Identical
    bytes elsewhere would hold the same values, so a match is always right."""
    import dataclasses
    import mmap

    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(onnx_file), load_external_data=False)
    order = {t.name: i for i, t in enumerate(model.graph.initializer)}
    tensors = {t.name: t for t in model.graph.initializer}
    located = {}
    with open(onnx_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        position = 0
        for weight in sorted(weights, key=lambda w: order[w.input]):
            tensor = tensors[weight.input]
            if uses_external_data(tensor):
                info = ExternalDataInfo(tensor)
                where = (f"{folder_name}/{info.location}", int(info.offset or 0))
            else:
                if not tensor.raw_data:
                    raise RuntimeError(f"adaptable weight {weight.input}: saved without raw_data")
                offset = data.find(tensor.raw_data, position)
                if offset < 0:
                    raise RuntimeError(
                        f"adaptable weight {weight.input}: bytes not found in {onnx_file}"
                    )
                position = offset + len(tensor.raw_data)
                where = (f"{folder_name}/{onnx_file.name}", offset)
            located[weight.input] = dataclasses.replace(weight, data_file=where[0], offset=where[1])
    return [located[w.input] for w in weights]
