"""Token merging (ToMe for SD, the ``tomesd`` package) in an exportable form.

tomesd decides each merge from Python ints (token counts, ``int(N * ratio)``) and
averages merged tokens with ``scatter_reduce(mean)``: traced, the ints would be baked
in at the trace size, and ONNX has no mean reduction. This module patches a U-Net's
BasicTransformerBlocks (the model's own modules, as tomesd does, nothing global) with
the same algorithm in tensor arithmetic on shapes, so the graph serves every size:

- dst tokens: the top-left token of each ``sy x sx`` cell (tomesd's ``use_rand=False``);
- bipartite soft matching: cosine similarity src -> dst, the ``r`` most similar src
  tokens merged into their best dst;
- the mean as two scatter-adds (values, counts) and a division, as scatter_reduce
  "mean" with ``include_self`` computes it.

Whether a block merges depends, as in tomesd, on its down-sampling level (the token
count against the input's), fixed by the architecture, so it is decided at trace time.
Tokens are in another order than tomesd's (nonzero, not argsort, picks src and dst), which
attention does not see: outputs equal tomesd's to float32 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.onnx.operators
from sdrt.export.tome_options import TomeOptions

from sdrt.errors import InputError

BLOCK_CLASS = "BasicTransformerBlock"


def _size(x: torch.Tensor, dim: int) -> torch.Tensor:
    """A dimension as a 0-d int64 tensor, so that tracing keeps it symbolic."""
    return torch.onnx.operators.shape_as_tensor(x)[dim]


class _Merge:
    """One block call's merge and unmerge (tomesd's bipartite_soft_matching_random2d)."""

    def __init__(self, metric: torch.Tensor, h: torch.Tensor, w: torch.Tensor, options):
        tokens = _size(metric, 1)
        r = torch.floor(tokens.to(torch.float64) * options.ratio).to(torch.int64)
        t = torch.arange(tokens, device=metric.device)
        row, col = t // w, t % w
        hsy, wsx = h // options.sy, w // options.sx
        is_dst = (
            (row % options.sy == 0)
            & (col % options.sx == 0)
            & (row < hsy * options.sy)
            & (col < wsx * options.sx)
        )
        self.a_idx = torch.nonzero(~is_dst)[:, 0][None, :, None]  # src
        self.b_idx = torch.nonzero(is_dst)[:, 0][None, :, None]  # dst
        normed = metric / metric.norm(dim=-1, keepdim=True)
        a, b = self.split(normed)
        scores = a @ b.transpose(-1, -2)
        r = torch.minimum(r, _size(a, 1))
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        self.unm_idx = _take(edge_idx, r, _size(a, 1))
        self.src_idx = _take(edge_idx, torch.zeros_like(r), r)
        self.dst_idx = torch.gather(node_idx[..., None], dim=-2, index=self.src_idx)

    def split(self, x: torch.Tensor):
        src = torch.gather(x, 1, self.a_idx.expand(x.shape[0], -1, x.shape[-1]))
        dst = torch.gather(x, 1, self.b_idx.expand(x.shape[0], -1, x.shape[-1]))
        return src, dst

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        src, dst = self.split(x)
        n, c = x.shape[0], x.shape[-1]
        unm = torch.gather(src, -2, self.unm_idx.expand(n, -1, c))
        src = torch.gather(src, -2, self.src_idx.expand(n, -1, c))
        index = self.dst_idx.expand(n, -1, c)
        # scatter_reduce "mean" (include_self): (dst + sum of src) / (1 + count)
        sums = dst.scatter_add(-2, index, src)
        counts = torch.ones_like(dst).scatter_add(-2, index, torch.ones_like(src))
        return torch.cat([unm, sums / counts], dim=1)

    def unmerge(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        unm_len = _size(self.unm_idx, 1)
        n, c = x.shape[0], x.shape[-1]
        unm = _take(x, torch.zeros_like(unm_len), unm_len)
        dst = _take(x, unm_len, _size(x, 1))
        src = torch.gather(dst, -2, self.dst_idx.expand(n, -1, c))
        out = torch.zeros_like(like)
        a_idx = self.a_idx.expand(n, -1, 1)  # src positions, per batch item
        out = out.scatter(-2, self.b_idx.expand(n, -1, c), dst)
        out = out.scatter(-2, torch.gather(a_idx, 1, self.unm_idx).expand(n, -1, c), unm)
        return out.scatter(-2, torch.gather(a_idx, 1, self.src_idx).expand(n, -1, c), src)


def _take(x: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``x[:, start:end]`` with tensor bounds (a gather over an arange, kept symbolic)."""
    index = torch.arange(start, end, device=x.device)
    return torch.index_select(x, 1, index)


def _tome_forward(
    self,
    hidden_states,
    attention_mask=None,
    encoder_hidden_states=None,
    encoder_attention_mask=None,
    timestep=None,
    cross_attention_kwargs=None,
    class_labels=None,
    added_cond_kwargs=None,
):
    """BasicTransformerBlock.forward for norm_type "layer_norm" with ToMe on self-attention
    (tomesd's make_diffusers_tome_block with merge_attn only)."""
    info = self._sdrt_tome
    tokens = hidden_states.shape[1]
    downsample = int(math.ceil(math.sqrt(info["tokens"] // tokens)))  # trace-time level
    cross_attention_kwargs = cross_attention_kwargs or {}
    norm_hidden_states = self.norm1(hidden_states)
    merging = downsample <= info["options"].max_downsample and int(tokens * info["ratio"]) > 0
    if merging:
        h = (info["h"] + downsample - 1) // downsample
        w = (info["w"] + downsample - 1) // downsample
        tome = _Merge(hidden_states, h, w, info["options"])  # metric: the block input
        attn_input = tome.merge(norm_hidden_states)
    else:
        attn_input = norm_hidden_states
    attn_output = self.attn1(
        attn_input,
        encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
        attention_mask=attention_mask,
        **cross_attention_kwargs,
    )
    if merging:
        attn_output = tome.unmerge(attn_output, norm_hidden_states)
    hidden_states = attn_output + hidden_states
    if self.attn2 is not None:
        norm_hidden_states = self.norm2(hidden_states)
        attn_output = self.attn2(
            norm_hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=encoder_attention_mask,
            **cross_attention_kwargs,
        )
        hidden_states = attn_output + hidden_states
    norm_hidden_states = self.norm3(hidden_states)
    return self.ff(norm_hidden_states) + hidden_states


def apply_tome(unet: torch.nn.Module, options: TomeOptions) -> int:
    """Patch ``unet``'s transformer blocks in place; returns how many were patched."""
    info = {"options": options, "ratio": options.ratio, "tokens": None, "h": None, "w": None}

    def record_size(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        info["tokens"] = sample.shape[2] * sample.shape[3]
        info["h"], info["w"] = _size(sample, 2), _size(sample, 3)

    patched = 0
    for module in unet.modules():
        if type(module).__name__ != BLOCK_CLASS:
            continue
        if getattr(module, "norm_type", "layer_norm") != "layer_norm" or getattr(
            module, "pos_embed", None
        ):
            raise InputError(
                f"--tome-ratio supports transformer blocks with norm_type 'layer_norm', "
                f"got {getattr(module, 'norm_type', None)!r}"
            )
        module._sdrt_tome = info
        module.forward = _tome_forward.__get__(module)
        patched += 1
    unet.register_forward_pre_hook(record_size, with_kwargs=True)
    return patched
