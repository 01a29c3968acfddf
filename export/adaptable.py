"""Run-time LoRA as low-rank branches: every targeted module computes
``y = base(x) + (x @ down_t) @ up_t`` (a 1x1 conv: the same on its channels).

The base weight stays a constant initializer, so ONNX Runtime pre-packs it as in a plain
build. ``down_t`` [in, r] and ``up_t`` [r, out] are graph inputs with a default (an
overridable initializer; tiny, so that ORT cannot pre-pack them costs nothing) and a rank
dimension of their own per target: a snapshot feeds the active adapters' factors
concatenated along it, and a session fed nothing runs the defaults, which are zero-size
(rank 0: ORT's K=0 MatMul yields exact zeros, and measured faster than rank-1 zeros), so
the branch adds exactly 0.

At export the factors are rank-1 random parameters named after the module (the exporter
would merge identical zero initializers, and names them after the parameter); after the
export they are replaced by the zero-size defaults and given a symbolic rank.

What LoRA touches in practice (diffusers' and kohya's default targets): in the U-Net, the
Linear layers and 1x1 Convs inside the transformer blocks (``*.attentions.*``); in the CLIP
text encoders, the encoder layers' q/k/v/out_proj and fc1/fc2. Distillation LoRAs (LCM-LoRA,
TCD-LoRA, Hyper-SD, SDXL-Lightning) and LoCon also train the ResNets (``conv1``/``conv2``
3x3, ``conv_shortcut``, ``time_emb_proj``), the down/upsamplers' 3x3 convs and sometimes
``conv_in``/``conv_out`` and the time embedding: scope ``"all"`` gives every Linear and
Conv2d of the U-Net a branch. A kxk conv's branch is peft's: ``down`` a kxk conv (the base's
stride, padding, dilation) with r outputs, ``up`` a 1x1 conv: its ``down`` input is the
conv weight [r, in, k, k] itself (``lora_down``), its ``up_t`` [r, out] as for the others.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from sdrt.manifest import LoraBranch

# Bump when what is exposed, or how it is recorded, changes: invalidates reused components.
# 1: overridable whole weights; 2: low-rank branches.
ADAPTABLE_FORMAT = 2
# The module names (relative to the diffusers/transformers model) that get a branch: with
# scope "attention" (the default) the transformer blocks', with "all" every U-Net module.
UNET_TARGET = re.compile(r"^(down_blocks|mid_block|up_blocks)\..*\battentions\.\d+\.")
UNET_ALL = re.compile(r".")  # build_config.LORA_TARGETS names the two
# transformers 5's CLIPTextModel has no ``text_model.`` level; older ones (and files) do.
TEXT_ENCODER_TARGET = re.compile(r"^(text_model\.)?encoder\.layers\.\d+\.")
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}
DOWN, UP = "lora_down_t", "lora_up_t"
CONV_DOWN = "lora_down"  # a kxk conv branch's down factor, [r, in, k, k]


class _LowRankBranch(torch.nn.Module):
    """``base(x) + (x @ down_t) @ up_t``; for a 1x1 conv, on the channel axis (NCHW); for a
    kxk conv, ``down`` is a conv of the base's geometry, then ``up`` on the channel axis."""

    def __init__(self, base: torch.nn.Module, features_in: int, features_out: int, seed: int):
        super().__init__()
        self.base = base
        self.conv = isinstance(base, torch.nn.Conv2d)
        self.spatial = self.conv and base.kernel_size != (1, 1)
        generator = torch.Generator().manual_seed(seed)  # distinct values: not merged
        if self.spatial:  # the conv weight itself: a reshape of it would be constant-folded
            shape = (1, base.in_channels, *base.kernel_size)
            self.lora_down = torch.nn.Parameter(torch.rand(*shape, generator=generator))
        else:
            self.lora_down_t = torch.nn.Parameter(torch.rand(features_in, 1, generator=generator))
        self.lora_up_t = torch.nn.Parameter(torch.rand(1, features_out, generator=generator))

    def forward(self, x):
        y = self.base(x)
        if self.spatial:
            base = self.base
            h = torch.nn.functional.conv2d(
                x, self.lora_down, stride=base.stride, padding=base.padding, dilation=base.dilation
            )
            return y + torch.matmul(h.permute(0, 2, 3, 1), self.lora_up_t).permute(0, 3, 1, 2)
        if self.conv:
            h = x.permute(0, 2, 3, 1)
            return y + torch.matmul(torch.matmul(h, self.lora_down_t), self.lora_up_t).permute(
                0, 3, 1, 2
            )
        return y + torch.matmul(torch.matmul(x, self.lora_down_t), self.lora_up_t)


def target_pattern(component: str, scope: str = "attention") -> re.Pattern | None:
    if component == "unet":
        return UNET_ALL if scope == "all" else UNET_TARGET
    if component.startswith("text_encoder"):
        return TEXT_ENCODER_TARGET
    return None


def make_adaptable(
    model: torch.nn.Module, prefix: str, component: str, scope: str = "attention"
) -> dict[str, str]:
    """Wrap the targeted modules of ``model`` (in place) in branches; return module name ->
    the initializer prefix the export gives its factors (``<prefix>.<module>.``).
    ``prefix`` is the model's attribute path in the export wrapper ("unet", "model")."""
    pattern = target_pattern(component, scope)
    if pattern is None:
        return {}
    targets: dict[str, str] = {}
    for name, module in list(model.named_modules()):
        if not pattern.match(name):
            continue
        if isinstance(module, torch.nn.Linear):
            sizes = (module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):
            sizes = (module.in_channels, module.out_channels)
        elif isinstance(module, torch.nn.Conv2d) and scope == "all" and _plain_conv(module):
            kh, kw = module.kernel_size
            sizes = (module.in_channels * kh * kw, module.out_channels)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        branch = _LowRankBranch(module, *sizes, seed=len(targets))
        setattr(model.get_submodule(parent_name), child, branch)
        targets[name] = f"{prefix}.{name}."
    return targets


def _plain_conv(module: torch.nn.Conv2d) -> bool:
    """A conv peft's LoRA reproduces: one group, zero padding given as numbers."""
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _kernels(model: torch.nn.Module, targets: dict[str, str]) -> dict[str, tuple[int, int]]:
    """module -> its kxk kernel, for the conv targets whose kernel is not 1x1."""
    kernels = {}
    for name in targets:
        module = model.get_submodule(name)
        base = getattr(module, "base", module)
        if isinstance(base, torch.nn.Conv2d) and base.kernel_size != (1, 1):
            kernels[name] = tuple(base.kernel_size)
    return kernels


def expose_branches(
    model: onnx.ModelProto,
    targets: dict[str, str],
    kernels: dict[str, tuple[int, int]] | None = None,
) -> list[LoraBranch]:
    """Make each target's factors zero-size graph inputs with defaults (in place); the
    records for sdrt.json. A factor the export did not keep by name is an error: the
    records must cover exactly what the graph takes."""
    initializers = {t.name: t for t in model.graph.initializer}
    kernels = kernels or {}
    names = {m: (p + (CONV_DOWN if m in kernels else DOWN), p + UP) for m, p in targets.items()}
    missing = sorted(n for pair in names.values() for n in pair if n not in initializers)
    if missing:
        raise RuntimeError(
            f"LoRA branches: the exported graph has no initializers {missing[:5]} "
            f"({len(missing)} of {2 * len(targets)}); the exporter renamed or folded them"
        )
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ranked: set[str] = set()  # tensors with a rank axis, whose traced shape must go
    inputs = {i.name for i in model.graph.input}
    branches = []
    for index, (module, (down, up)) in enumerate(sorted(names.items())):
        down_tensor, up_tensor = initializers[down], initializers[up]
        dtype = _ONNX_DTYPES.get(down_tensor.data_type)
        if dtype is None:
            raise RuntimeError(f"LoRA branch {down}: unexpected ONNX type {down_tensor.data_type}")
        features_out = up_tensor.dims[1]
        rank = f"lora_rank_{index}"
        if module in kernels:  # [1, in, kh, kw]: the conv weight
            features_in = int(np.prod(down_tensor.dims))
            down_shape, down_dims = (0, *down_tensor.dims[1:]), [rank, *down_tensor.dims[1:]]
        else:
            features_in = down_tensor.dims[0]
            down_shape, down_dims = (features_in, 0), [features_in, rank]
        for tensor, shape in ((down_tensor, down_shape), (up_tensor, (0, features_out))):
            tensor.CopyFrom(numpy_helper.from_array(np.zeros(shape, dtype), tensor.name))
        for name, shape in ((down, down_dims), (up, [rank, features_out])):
            if name not in inputs:
                model.graph.input.append(
                    onnx.helper.make_tensor_value_info(name, down_tensor.data_type, shape)
                )
        ranked.update(o for node in consumers.get(down, ()) for o in node.output)
        kernel = tuple(kernels.get(module, (1, 1)))
        branches.append(LoraBranch(module, down, up, features_in, features_out, dtype, kernel))
    kept = [v for v in model.graph.value_info if v.name not in ranked]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    return branches


def adapt_wrapper(
    wrapper: torch.nn.Module, component: str, scope: str = "attention"
) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """``make_adaptable`` on the model inside a components.py export wrapper; also each kxk
    conv target's kernel."""
    for attribute in ("unet", "model"):  # UNetExport.unet, TextEncoderExport.model
        model = getattr(wrapper, attribute, None)
        if isinstance(model, torch.nn.Module):
            found = make_adaptable(model, attribute, component, scope)
            return found, _kernels(model, found)
    return {}, {}
