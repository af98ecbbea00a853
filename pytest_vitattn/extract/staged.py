"""Anatomies of the families whose CLS query attends over a different grid in each stage.

* PiT (``PoolingVisionTransformer``): timm ``Attention`` blocks in stages; between stages a
  strided depthwise convolution shrinks the patch grid (27x27, 14x14, 7x7 at 224 pixels)
  while the CLS (and distillation) tokens pass through a linear layer; the head count
  changes with the stage (2, 4, 8 in ``pit_ti_224``).
* MViTv2 with a class token (``mvitv2_*_cls``): every block pools its keys (and, at a stage's
  first block, its queries) to a coarser grid; the CLS token is kept in front of the pooled
  keys, so its row is a distribution over 1 + k_h * k_w keys, and the key grid is the grid
  its map is drawn on (it can differ from the query grid of the same block).

Each layer's grid is computed from the input and the model's own convolutions and pooling
modules, and checked against what the model says it was built for; the extraction checks
every layer's row length against its grid, so a wrong grid is an error, never a map.
"""

from __future__ import annotations

from torch import nn

from pytest_vitattn.errors import ImageError, UnsupportedModelError
from pytest_vitattn.extract.anatomy import Anatomy, AttentionSite
from pytest_vitattn.extract.grids import _conv_out, _size
from pytest_vitattn.extract.sites import site_kind


def _site(model: nn.Module, path: str, layer: int) -> AttentionSite:
    name = type(model).__name__
    kind = site_kind(model.get_submodule(path), f"{name}.{path}")
    if kind.queries != "tokens":
        raise UnsupportedModelError(f"{name}.{path} is not token self-attention")
    return AttentionSite(path, f"{path}.{kind.softmax_node}", layer, kind.call)


def _staged(
    family: str, sites: list[AttentionSite], prefix: int, named, grid_rule, layer_rule
) -> Anatomy:
    return Anatomy(
        family=family,
        sites=tuple(sites),
        num_prefix_tokens=prefix,
        query_index=0,
        fast_path=True,
        num_queries=prefix,
        named_queries=tuple(named),
        # Rollout chains square matrices over the same tokens; here the token count changes.
        has_rollout=False,
        grid_rule=grid_rule,
        layer_grid_rule=layer_rule,
    )


def _pooled(size: tuple[int, int], module: nn.Module | None) -> tuple[int, int]:
    """The grid after a Conv2d or pooling module (None: unchanged)."""
    if module is None:
        return size
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        raise UnsupportedModelError(
            f"pooling by {type(module).__name__}, whose output grid pytest-vitattn cannot "
            f"compute, so it refuses rather than risk a wrong map"
        )
    geometry = _Geometry(module)
    return _conv_out(size[0], geometry, 0), _conv_out(size[1], geometry, 1)  # type: ignore[arg-type]


class _Geometry:
    """kernel_size, stride, padding and dilation of a conv or pooling module as pairs."""

    def __init__(self, module: nn.Module) -> None:
        def pair(value):
            return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

        self.kernel_size = pair(module.kernel_size)
        self.stride = pair(module.stride)
        self.padding = pair(module.padding)
        self.dilation = pair(getattr(module, "dilation", 1))


# --- PiT ----------------------------------------------------------------------------------


def pit(model: nn.Module) -> Anatomy:
    """Every block of every stage, CLS (and distillation) tokens at 0 (and 1)."""
    prefix = int(model.cls_token.shape[1])
    sites = []
    for stage_index, stage in enumerate(model.transformers):
        for block_index in range(len(stage.blocks)):
            path = f"transformers.{stage_index}.blocks.{block_index}.attn"
            sites.append(_site(model, path, len(sites)))
    named = [("cls", 0)] + ([("dist", 1)] if prefix > 1 else [])
    return _staged("pit", sites, prefix, named, lambda m, hw: _pit_grids(m, hw)[0], _pit_grids)


def _pit_grids(model: nn.Module, input_hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Each block's grid: the stem's, then after each stage's pooling convolution.

    Raises:
        ImageError: the input does not give the grid of the position embedding (PiT adds it
            without resizing, so other sizes do not run).
    """
    grid = _pooled(tuple(input_hw), model.patch_embed.conv)
    expected = tuple(int(v) for v in model.pos_embed.shape[-2:])
    if grid != expected:
        built_for = tuple(int(v) for v in model.patch_embed.img_size)
        raise ImageError(
            f"the input is {input_hw[0]}x{input_hw[1]} pixels, but {type(model).__name__} "
            f"was built for {_size(built_for)} (its position embedding is a {_size(expected)} "
            f"grid, this input makes {_size(grid)}): resize the input (the vitattn fixture "
            f"does this from the model's data config), or create the model with img_size=..."
        )
    grids = []
    for stage in model.transformers:
        if stage.pool is not None:
            grid = _pooled(grid, stage.pool.conv)
        grids.extend([grid] * len(stage.blocks))
    return tuple(grids)


# --- MViTv2 -------------------------------------------------------------------------------


def mvitv2(model: nn.Module) -> Anatomy:
    """Every block's multi-scale attention, CLS token at 0, over that block's pooled keys."""
    from pytest_vitattn.extract.refusals import no_query

    if getattr(model, "cls_token", None) is None:
        raise no_query(model)
    sites = []
    for stage_index, stage in enumerate(model.stages):
        for block_index in range(len(stage.blocks)):
            path = f"stages.{stage_index}.blocks.{block_index}.attn"
            sites.append(_site(model, path, len(sites)))
    return _staged(
        "mvitv2-cls",
        sites,
        1,
        [("cls", 0)],
        lambda m, hw: _mvit_grids(m, hw)[0],
        lambda m, hw: _mvit_grids(m, hw)[1],
    )


def _mvit_grids(
    model: nn.Module, input_hw: tuple[int, int]
) -> tuple[tuple[int, int], tuple[tuple[int, int], ...]]:
    """The patch embedding's grid, and each block's key grid (after its key pooling).

    Raises:
        ImageError: the input does not give the stage grids the model was built for (its
            relative position tables are sized for them).
    """
    embed = _pooled(tuple(input_hw), model.patch_embed.proj)
    size = embed
    keys = []
    for stage_index, stage in enumerate(model.stages):
        for block in stage.blocks:
            keys.append(_pooled(size, block.attn.pool_k))
            size = _pooled(size, block.attn.pool_q)
        built = tuple(int(v) for v in stage.feat_size)
        if size != built:
            raise ImageError(
                f"the input is {input_hw[0]}x{input_hw[1]} pixels, which makes a "
                f"{_size(size)} grid after stage {stage_index} of {type(model).__name__}, "
                f"but the model was built for {_size(built)} there (its relative position "
                f"tables are sized for the input size it was created with): resize the input "
                f"(the vitattn fixture does this from the model's data config), or create "
                f"the model with img_size=..."
            )
    return embed, tuple(keys)
