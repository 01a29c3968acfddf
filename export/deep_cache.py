"""DeepCache for export: the U-Net's cached feature as an extra output, and shallow U-Nets.

DeepCache (Ma et al. 2023; the ``DeepCache`` package's ``DeepCacheSDHelper``) evaluates the
whole U-Net every ``cache_interval`` steps and, on the steps between, recomputes only the
outermost part of it: with ``cache_branch_id`` B (cache block ``B // 3``, cache layer
``B % 3``; blocks count from the outermost level, layers within a block as DeepCache wraps
them) it runs

- the time embedding and ``conv_in``;
- every down block above the cache block, and the first ``B % 3`` resnet(+attention)
  layers of the cache block;
- in the up block of the cache block's level, the resnet(+attention) layers DeepCache
  numbers ``<= B % 3`` (it numbers an up block's layers from its last one), then its
  up-sampler, then every up block above it, and the output convolution;

and takes every other module's output from the last full step. The only cached output
those layers read is the hidden state entering the first recomputed up layer (before its
concatenation with the skip connection): the down-side outputs they read are all
recomputed. So a build exports

- ``unet`` with one extra output per branch, ``deep_cache_feature_<B>``: that hidden state;
- ``unet_shallow_<B>`` per branch: the inputs of ``unet`` plus ``deep_cache_feature``, and
  ``out_sample``, computing only the layers above (its weights are those layers' only).

On one set of inputs the shallow U-Net fed the full U-Net's feature gives the full U-Net's
output (tests/test_deep_cache.py checks that, and the images against DeepCacheSDHelper).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from sdrt.export.components import ExportWrapper, ShapeCase, UNetExport

from sdrt.errors import InputError
from sdrt.guidance_embedding import GUIDANCE_EMBEDDING_INPUT
from sdrt.manifest import DEEP_CACHE_FEATURE_INPUT, deep_cache_feature_output, shallow_unet_name

LAYERS_PER_BLOCK_ID = 3  # DeepCache's cache_layer_id = cache_branch_id % 3
_SHALLOW = re.compile(r"unet_shallow_(\d+)")


@dataclass(frozen=True)
class BranchCut:
    """Where DeepCache's branch ``branch`` cuts a U-Net (diffusers' module indices)."""

    branch: int
    block: int  # DeepCache's cache_block_id: down block index, counted from the outermost
    down_layers: int  # resnets of down block ``block`` recomputed on cached steps
    up_block: int  # diffusers' up_blocks index of that level (they run innermost first)
    first_up_layer: int  # the first of its resnets recomputed (diffusers' order)


def check_branches(levels: int, branches: tuple[int, ...]) -> None:
    """InputError unless every branch cuts a U-Net of ``levels`` down blocks."""
    for branch in branches:
        if not 0 <= branch < levels * LAYERS_PER_BLOCK_ID:
            raise InputError(
                f"deep cache branch: expected 0..{levels * LAYERS_PER_BLOCK_ID - 1} for a U-Net "
                f"with {levels} levels, got {branch}"
            )


def branch_cut(unet: torch.nn.Module, branch: int) -> BranchCut:
    """The cut of ``branch`` in this U-Net, or InputError when it has no such branch."""
    levels = len(unet.down_blocks)
    check_branches(levels, (branch,))
    block, layer = divmod(branch, LAYERS_PER_BLOCK_ID)
    down_resnets = len(unet.down_blocks[block].resnets)
    up_block = levels - 1 - block
    up_resnets = len(unet.up_blocks[up_block].resnets)
    # DeepCache numbers an up block's layers last-first and recomputes those <= layer.
    first_up_layer = max(0, up_resnets - 1 - layer)
    return BranchCut(branch, block, min(layer, down_resnets), up_block, first_up_layer)


def shallow_branch(name: str) -> int | None:
    """The branch of a ``unet_shallow_<B>`` component name, else None."""
    match = _SHALLOW.fullmatch(name)
    return None if match is None else int(match.group(1))


def _feature_module(unet: torch.nn.Module, cut: BranchCut) -> torch.nn.Module:
    """The module whose output is the hidden state entering the first recomputed up layer."""
    up = unet.up_blocks[cut.up_block]
    j = cut.first_up_layer
    if j > 0:
        attentions = getattr(up, "attentions", None)
        return attentions[j - 1] if attentions else up.resnets[j - 1]
    return unet.up_blocks[cut.up_block - 1] if cut.up_block > 0 else unet.mid_block


def _first(output):
    """A module's hidden state: attention blocks return a tuple or an output object."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


class FeatureCapture:
    """Forward hooks that keep each branch's feature of the latest U-Net forward."""

    def __init__(self, unet: torch.nn.Module, branches: tuple[int, ...]):
        self.cuts = tuple(branch_cut(unet, b) for b in branches)
        self.features: dict[int, torch.Tensor] = {}
        for cut in self.cuts:
            module = _feature_module(unet, cut)
            module.register_forward_hook(self._hook(cut.branch))

    def _hook(self, branch: int):
        def keep(module, inputs, output):
            self.features[branch] = _first(output)

        return keep


class UNetWithFeaturesExport(ExportWrapper):
    """``unet`` giving, after ``out_sample``, one ``deep_cache_feature_<B>`` per branch."""

    name = source_folder = "unet"

    def __init__(self, base: UNetExport, branches: tuple[int, ...]):
        super().__init__()
        self.base = base
        self.unet = base.unet  # where export/adaptable.py looks for the model
        self.branches = tuple(branches)
        self.capture = FeatureCapture(self.unet, self.branches)
        self.input_names = base.input_names
        self.output_names = base.output_names + tuple(
            deep_cache_feature_output(b) for b in self.branches
        )

    def forward(self, *inputs):
        out = self.base(*inputs)
        return (out, *(self.capture.features[b] for b in self.branches))

    def dynamic_axes(self):
        axes = self.base.dynamic_axes()
        for b in self.branches:
            axes[deep_cache_feature_output(b)] = _feature_axes(b)
        return axes

    def sample_inputs(self, case: ShapeCase, generator: torch.Generator):
        return self.base.sample_inputs(case, generator)


class ShallowUNetExport(ExportWrapper):
    """``unet_shallow_<B>``: ``unet``'s inputs + ``deep_cache_feature`` -> ``out_sample``."""

    source_folder = "unet"

    def __init__(self, base: UNetExport, branch: int):
        super().__init__()
        self.base = base
        self.unet = base.unet
        self.cut = branch_cut(self.unet, branch)
        self.name = shallow_unet_name(branch)
        self.input_names = base.input_names + (DEEP_CACHE_FEATURE_INPUT,)
        self.output_names = ("out_sample",)
        self.capture = FeatureCapture(self.unet, (branch,))

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        *extra, feature = rest
        named = dict(zip(self.base.input_names[3:], extra, strict=True))
        added_cond = None
        if self.base.text_time:
            added_cond = {"text_embeds": named["text_embeds"], "time_ids": named["time_ids"]}
        return shallow_forward(
            self.unet,
            self.cut,
            sample,
            timestep,
            encoder_hidden_states,
            feature,
            added_cond,
            timestep_cond=named.get(GUIDANCE_EMBEDDING_INPUT),
        )

    def dynamic_axes(self):
        axes = self.base.dynamic_axes()
        axes[DEEP_CACHE_FEATURE_INPUT] = _feature_axes(self.cut.branch)
        return axes

    def sample_inputs(self, case: ShapeCase, generator: torch.Generator):
        """The U-Net's sample inputs, and the feature the full U-Net gives for them."""
        inputs = self.base.sample_inputs(case, generator)
        with torch.no_grad():
            self.base(*inputs.values())
        inputs[DEEP_CACHE_FEATURE_INPUT] = self.capture.features[self.cut.branch]
        return inputs


def _feature_axes(branch: int) -> dict[int, str]:
    return {0: "batch", 2: f"deep_cache_{branch}_height", 3: f"deep_cache_{branch}_width"}


def _embeddings(unet, sample, timestep, encoder_hidden_states, added_cond, timestep_cond):
    """The time embedding and the conditioning, as UNet2DConditionModel.forward makes them
    (an LCM U-Net's guidance embedding, ``timestep_cond``, joins the time embedding)."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=None)
    if class_emb is not None:
        concat = unet.config.class_embeddings_concat
        emb = torch.cat([emb, class_emb], dim=-1) if concat else emb + class_emb
    aug_emb = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond
    )
    emb = emb + aug_emb if aug_emb is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond
    )
    return sample, emb, states


def _layer(block, j, hidden, emb, states):
    """Resnet ``j`` of a block, then its attention if the block has them."""
    hidden = block.resnets[j](hidden, emb)
    attentions = getattr(block, "attentions", None)
    if attentions:
        hidden = attentions[j](hidden, encoder_hidden_states=states, return_dict=False)[0]
    return hidden


def shallow_forward(
    unet,
    cut: BranchCut,
    sample,
    timestep,
    encoder_hidden_states,
    feature,
    added,
    timestep_cond=None,
):
    """What DeepCache recomputes on a cached step, the cached feature given."""
    sample, emb, states = _embeddings(
        unet, sample, timestep, encoder_hidden_states, added, timestep_cond
    )
    hidden = unet.conv_in(sample)
    skips = [hidden]
    for block in unet.down_blocks[: cut.block]:
        if getattr(block, "has_cross_attention", False):
            hidden, outputs = block(hidden, emb, encoder_hidden_states=states)
        else:
            hidden, outputs = block(hidden, emb)
        skips.extend(outputs)
    down = unet.down_blocks[cut.block]
    for j in range(cut.down_layers):
        hidden = _layer(down, j, hidden, emb, states)
        skips.append(hidden)
    # The cut up block, from its first recomputed layer, on the cached feature.
    up = unet.up_blocks[cut.up_block]
    hidden = feature
    for j in range(cut.first_up_layer, len(up.resnets)):
        hidden = torch.cat([hidden, skips.pop()], dim=1)
        hidden = _layer(up, j, hidden, emb, states)
    # Up-sampling sizes always come from the skip connections (any latent size works).
    for upsampler in up.upsamplers or ():
        hidden = upsampler(hidden, skips[-1].shape[2:])
    for block in unet.up_blocks[cut.up_block + 1 :]:
        count = len(block.resnets)
        outputs, skips = tuple(skips[-count:]), skips[:-count]
        size = skips[-1].shape[2:] if skips else None
        if getattr(block, "has_cross_attention", False):
            hidden = block(
                hidden_states=hidden,
                temb=emb,
                res_hidden_states_tuple=outputs,
                encoder_hidden_states=states,
                upsample_size=size,
            )
        else:
            hidden = block(
                hidden_states=hidden, temb=emb, res_hidden_states_tuple=outputs, upsample_size=size
            )
    if unet.conv_norm_out:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden)
