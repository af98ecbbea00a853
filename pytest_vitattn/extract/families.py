"""Anatomies of the families whose CLS query lives outside a plain ``blocks`` list.

* ConViT: the MHSA blocks after the GPSA ones (the CLS token joins the sequence there);
* VOLO: the class-attention blocks of ``post_network`` (the outlooker and transformer stages
  before them have no CLS token);
* TNT: the outer (patch-level) attention of every block (``attn_out``);
* CrossViT: one branch's self-attention blocks, each branch with its own CLS token and grid;
* NaFlexViT: ``embeds`` instead of ``patch_embed``; CLS (and register) tokens, or the
  attention-pooling query.

Each builder returns an ``Anatomy`` or raises ``UnsupportedModelError`` with the reason.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from pytest_vitattn.errors import ImageError, UnsupportedModelError
from pytest_vitattn.extract.anatomy import Anatomy, AttentionSite
from pytest_vitattn.extract.grids import _conv_out, _multiples, _size
from pytest_vitattn.extract.sites import site_kind


def _site(model: nn.Module, path: str, layer: int, queries: str) -> AttentionSite:
    name = type(model).__name__
    kind = site_kind(model.get_submodule(path), f"{name}.{path}")
    if kind.queries != queries:
        raise UnsupportedModelError(f"{name}.{path} is not {queries} attention")
    return AttentionSite(path, f"{path}.{kind.softmax_node}", layer, kind.call)


def cls_only(family: str, sites: list[AttentionSite], grid_rule, rollout: bool) -> Anatomy:
    """The anatomy of a model whose read layers have one query, the CLS token at 0."""
    return Anatomy(
        family=family,
        sites=tuple(sites),
        num_prefix_tokens=1,
        query_index=0,
        fast_path=True,
        num_queries=1,
        named_queries=(("cls", 0),),
        has_rollout=rollout,
        grid_rule=grid_rule,
    )


def pooling_query(
    family: str, site: AttentionSite, pool: nn.Module, num_prefix_tokens: int, grid_rule
) -> Anatomy:
    """The anatomy of an attention-pooling query (``AttentionPoolLatent``): one layer, its
    latent query 0 read as the CLS-like row, over ``num_prefix_tokens`` prefix tokens (0 when
    the model drops them before the pool) and the final patch tokens; no rollout."""
    return Anatomy(
        family=family,
        sites=(site,),
        num_prefix_tokens=num_prefix_tokens,
        query_index=0,
        fast_path=True,
        num_queries=int(pool.latent_len),
        named_queries=(("cls", 0),),
        has_rollout=False,
        grid_rule=grid_rule,
    )


def _fixed(input_hw: tuple[int, int], built_for: tuple[int, int], grid: tuple[int, int]):
    if tuple(input_hw) != tuple(built_for):
        raise ImageError(
            f"the input is {input_hw[0]}x{input_hw[1]} pixels, but the model was built for "
            f"{_size(built_for)}: resize the input (the vitattn fixture does this from the "
            f"model's data config), or create the model with img_size=..."
        )
    return grid


# --- ConViT ------------------------------------------------------------------------------


def convit(model: nn.Module) -> Anatomy:
    """The MHSA blocks from ``local_up_to_layer`` on: the CLS token is inserted before them."""
    name = type(model).__name__
    start = int(model.local_up_to_layer)
    if getattr(model, "cls_token", None) is None or start >= len(model.blocks):
        raise UnsupportedModelError(
            f"{name} has no MHSA blocks with its class token (it was pruned or reset), so it "
            f"has no CLS attention to read; its GPSA blocks run before the CLS token exists."
        )
    sites = [
        _site(model, f"blocks.{index}.attn", layer, "tokens")
        for layer, index in enumerate(range(start, len(model.blocks)))
    ]
    from pytest_vitattn.extract.grids import patch_embed_grid

    # No rollout: the GPSA layers before the CLS token have no CLS row to chain.
    return cls_only("convit", sites, patch_embed_grid, rollout=False)


# --- VOLO ---------------------------------------------------------------------------------


def volo(model: nn.Module) -> Anatomy:
    """The class-attention blocks of ``post_network``, CLS over the final token grid."""
    name = type(model).__name__
    if model.post_network is None or getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(
            f"{name} was built without its class-attention blocks (post_network), so it "
            f"has no CLS token; its outlooker and transformer stages have no CLS query."
        )
    sites = [
        _site(model, f"post_network.{index}.attn", index, "class")
        for index in range(len(model.post_network))
    ]
    return cls_only("volo", sites, _volo_grid, rollout=False)


def _volo_grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Token grid after the patch stem and every downsampling of ``network``.

    Raises:
        ImageError: the input does not give the grid of the model's position embedding.
    """
    from timm.models.volo import Downsample

    convs = [m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d)]
    for block in model.network:
        if isinstance(block, Downsample):
            convs.extend(m for m in block.modules() if isinstance(m, nn.Conv2d))
    height, width = input_hw
    stride_h = stride_w = 1
    for conv in convs:
        height, width = _conv_out(height, conv, 0), _conv_out(width, conv, 1)
        stride_h, stride_w = stride_h * conv.stride[0], stride_w * conv.stride[1]
    if model.pos_embed is not None:
        # Only the size the position embedding was made for: its grid tiles the input evenly.
        expected = tuple(int(v) for v in model.pos_embed.shape[1:3])
        built_for = (expected[0] * stride_h, expected[1] * stride_w)
        if tuple(input_hw) != built_for:
            raise ImageError(
                f"the input is {input_hw[0]}x{input_hw[1]} pixels, but the model's position "
                f"embedding is a {_size(expected)} grid, built for {_size(built_for)}: resize "
                f"the input (the vitattn fixture does this from the model's data config), or "
                f"create the model with img_size=..."
            )
    elif input_hw[0] % stride_h or input_hw[1] % stride_w:
        raise ImageError(
            f"the input is {input_hw[0]}x{input_hw[1]} pixels, not a multiple of the model's "
            f"stride {stride_h}x{stride_w}, so its token grid would not tile the image evenly"
        )
    return height, width


# --- TNT ----------------------------------------------------------------------------------


def tnt(model: nn.Module) -> Anatomy:
    """The outer attention (over the CLS token and patch embeddings) of every block."""
    name = type(model).__name__
    if getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(f"{name} has no class token, so it has no CLS attention.")
    sites = [
        _site(model, f"blocks.{index}.attn_out", index, "tokens")
        for index in range(len(model.blocks))
    ]
    return cls_only("tnt", sites, _tnt_grid, rollout=True)


def _tnt_grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    embed = model.pixel_embed
    grid = (int(embed.grid_size[0]), int(embed.grid_size[1]))
    return _fixed(input_hw, tuple(int(v) for v in embed.img_size), grid)


# --- CrossViT -----------------------------------------------------------------------------


def crossvit_default_branch(model: nn.Module) -> int:
    """The primary branch: the one with the most self-attention blocks (ties: the first).

    In timm's CrossViTs that is branch 1, the large-patch (L) branch the paper calls primary.
    """
    depths = [
        sum(len(stage.blocks[branch]) for stage in model.blocks)
        for branch in range(model.num_branches)
    ]
    return depths.index(max(depths))


def crossvit(model: nn.Module, branch: int | None) -> Anatomy:
    """One branch's self-attention blocks, read with that branch's CLS token and grid.

    The cross-attention between branches (each CLS token attending to the other branch's
    patches) is not read.
    """
    name = type(model).__name__
    count = int(model.num_branches)
    if branch is None:
        branch = crossvit_default_branch(model)
    if not isinstance(branch, int) or isinstance(branch, bool) or not 0 <= branch < count:
        raise UnsupportedModelError(
            f"branch={branch!r} was asked for, but {name} has {count} branches "
            f"(0..{count - 1}; default {crossvit_default_branch(model)}, the primary one)"
        )
    if getattr(model, "crop_scale", False):
        raise UnsupportedModelError(
            f"{name} was created with crop_scale=True: its branches see centre crops of "
            f"different sizes, so a branch's grid does not cover the whole input; create it "
            f"with crop_scale=False (timm's default)."
        )
    sites = []
    for stage_index, stage in enumerate(model.blocks):
        for block_index in range(len(stage.blocks[branch])):
            path = f"blocks.{stage_index}.blocks.{branch}.{block_index}.attn"
            sites.append(_site(model, path, len(sites), "tokens"))
    if not sites:
        raise UnsupportedModelError(f"{name} branch {branch} has no self-attention blocks")
    # No rollout: the cross-attention between the blocks mixes the branches' CLS tokens.
    grid_rule = partial(_crossvit_grid, branch=branch)
    return cls_only(f"crossvit-branch{branch}", sites, grid_rule, rollout=False)


def _crossvit_grid(model: nn.Module, input_hw: tuple[int, int], branch: int) -> tuple[int, int]:
    scaled = model.img_size_scaled[branch]
    patch = model.patch_embed[branch].patch_size
    grid = (int(scaled[0]) // int(patch[0]), int(scaled[1]) // int(patch[1]))
    return _fixed(input_hw, tuple(int(v) for v in model.img_size), grid)


# --- NaFlexViT ----------------------------------------------------------------------------


def naflexvit(model: nn.Module) -> Anatomy:
    """CLS (+ registers) over the blocks, or the attention-pooling query over the patches."""
    embeds = model.embeds
    prefix = int(model.num_prefix_tokens)
    if getattr(embeds, "cls_token", None) is not None:
        sites = [
            _site(model, f"blocks.{index}.attn", index, "tokens")
            for index in range(len(model.blocks))
        ]
        return Anatomy(
            family="naflexvit",
            sites=tuple(sites),
            num_prefix_tokens=prefix,
            query_index=0,
            fast_path=True,
            num_queries=prefix,
            named_queries=(("cls", 0),),
            has_rollout=True,
            grid_rule=_naflex_grid,
        )
    pool = getattr(model, "attn_pool", None)
    if pool is not None:
        site = _site(model, "attn_pool", 0, "latent")
        keeps_prefix = bool(getattr(model, "pool_include_prefix", False))
        return pooling_query(
            "naflexvit-map", site, pool, prefix if keeps_prefix else 0, _naflex_grid
        )
    from pytest_vitattn.extract.refusals import no_cls_clause, no_query

    if prefix == 0:
        raise no_query(model)
    sites = [
        _site(model, f"blocks.{index}.attn", index, "tokens") for index in range(len(model.blocks))
    ]
    return Anatomy(
        family="naflexvit-registers",
        sites=tuple(sites),
        num_prefix_tokens=prefix,
        query_index=None,
        fast_path=True,
        num_queries=prefix,
        named_queries=(),
        has_rollout=True,
        grid_rule=_naflex_grid,
        no_query_reason=(
            f"{no_cls_clause(model)}, so there is no CLS attention row to read; reading row 0 "
            f"would show another token's attention. It has {prefix} register token(s): "
            f"token=0..{prefix - 1} reads a register token's attention instead (marker "
            f"token=..., --vitattn-token)."
        ),
    )


def _naflex_grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Grid of a dense (B, C, H, W) input: NaFlexViT patchifies it without padding.

    Raises:
        ImageError: the input is not a multiple of the patch size.
    """
    patch = tuple(int(v) for v in model.embeds.patch_size)
    height, width = input_hw
    if height % patch[0] or width % patch[1]:
        options = " or ".join(
            f"{h}x{w}" for h in _multiples(height, patch[0]) for w in _multiples(width, patch[1])
        )
        raise ImageError(
            f"an input of {height}x{width} pixels is not a multiple of the patch size "
            f"{_size(patch)}: NaFlexViT cuts a dense image into whole patches. Resize the "
            f"input to a multiple of {_size(patch)}; the nearest sizes are {options}."
        )
    return height // patch[0], width // patch[1]
