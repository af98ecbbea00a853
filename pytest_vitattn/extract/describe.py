"""Recognise a timm model's family and build its ``Anatomy``, or refuse with the reason.

Families (see ``extract.catalog`` for the table with examples):

* token self-attention with a CLS token (ViT, DeiT, DeiT-III, FlexiViT, DINOv2 and other
  register models, EVA/EVA-02, BEiT, parallel blocks): one row per block, query = CLS (or the
  distillation / a register token when asked); blocks whose own fixed mask keeps the CLS
  token from every patch (``zoo.MaskedBlock``) are left out, and rollout with them;
* class attention (CaiT, XCiT): only the class-attention blocks, whose single query is the
  CLS token; the patch blocks before them have no CLS token in their attention;
* attention pooling (``global_pool='map'``, e.g. SigLIP): the pooling query's attention over
  the final tokens, one layer; the blocks have no CLS token;
* no CLS but register tokens (``*_reg*_gap_*``): register rows only when asked for by index;
* ConViT, VOLO, TNT, CrossViT (one branch), NaFlexViT: built in ``extract.families``;
* a grid that changes between stages (PiT, MViTv2 ``*_cls``): built in ``extract.staged``,
  with a grid per layer;
* refused, with what the model has and lacks (``extract.refusals``): no CLS-like query
  (Swin, PVTv2, CNNs, ...), factorised attention (CoaT).
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from pytest_vitattn.errors import UnsupportedModelError
from pytest_vitattn.extract import families, staged
from pytest_vitattn.extract.anatomy import Anatomy, AttentionSite
from pytest_vitattn.extract.grids import conv_stack_grid, patch_embed_grid
from pytest_vitattn.extract.refusals import (
    WHAT_WORKS,
    factorised,
    has_class_token,
    no_cls_clause,
    no_query,
)
from pytest_vitattn.extract.sites import site_kind

_WHAT_WORKS = WHAT_WORKS

_FAMILY_OF_CLASS = {
    "VisionTransformer": "vit",
    "VisionTransformerDistilled": "deit-distilled",
    "VisionTransformerRelPos": "vit-relpos",
    "Eva": "eva",
    "Beit": "beit",
    "Cait": "cait",
    "Xcit": "xcit",
}

# Families whose CLS query is found by their own builder (``extract.families``).
_BUILDERS = {
    "ConVit": families.convit,
    "VOLO": families.volo,
    "TNT": families.tnt,
    "NaFlexVit": families.naflexvit,
    "PoolingVisionTransformer": staged.pit,
    "MultiScaleVit": staged.mvitv2,
}


QUERY_SOURCES = ("auto", "cls", "pool")


def describe(model: nn.Module, *, branch: int | None = None, query_source: str = "auto") -> Anatomy:
    """Find the CLS attention sites of a timm model, or refuse with the reason.

    Args:
        model: a timm model.
        branch: for multi-branch models (CrossViT), the branch whose CLS attention is read;
            default: the primary branch (the one with the most self-attention blocks).
        query_source: which CLS-like query to read, for models that have both a CLS token
            and an attention-pooling query (PE-core): ``"auto"`` (the CLS token if the model
            has one, else its pooling query), ``"cls"`` (the CLS token's row in every block)
            or ``"pool"`` (the pooling query's one row over the final tokens).

    Raises:
        UnsupportedModelError: no readable CLS-like attention, or no query of the asked
            ``query_source``; the message says what the model has, what it lacks and what
            would work instead.
    """
    if query_source not in QUERY_SOURCES:
        raise ValueError(f"query_source={query_source!r} is not one of {', '.join(QUERY_SOURCES)}")
    if hasattr(model, "describe_anatomy"):  # a transformers model (pytest_vitattn.hf)
        if query_source != "auto":
            raise UnsupportedModelError(
                f"query_source={query_source!r} was asked for, but transformers models are "
                f"read through their one CLS-like query; use query_source='auto'"
            )
        return model.describe_anatomy()
    name = type(model).__name__
    if query_source != "auto":
        _check_query_source(model, name, query_source)
    if branch is not None and name != "CrossVit":
        raise UnsupportedModelError(
            f"branch={branch!r} was asked for, but {name} has a single branch; only "
            f"CrossViT has several"
        )
    if name == "CrossVit":
        return families.crossvit(model, branch)
    if name in _BUILDERS:
        return _BUILDERS[name](model)
    _refuse_known_unreadable(model, name)
    if hasattr(model, "blocks_token_only") or hasattr(model, "cls_attn_blocks"):
        return _class_attention(model, name)
    has_cls = getattr(model, "cls_token", None) is not None
    pool = getattr(model, "attn_pool", None)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    has_layout = isinstance(getattr(model, "blocks", None), nn.Module) and hasattr(
        model, "patch_embed"
    )
    if not has_cls and pool is None and (prefix == 0 or not has_layout):
        if has_class_token(model):
            raise UnsupportedModelError(
                f"{name} has a class token, but not in a layout pytest-vitattn has been "
                f"verified on (a blocks list over a patch embedding), so it refuses rather "
                f"than risk a wrong map. {_WHAT_WORKS}"
            )
        raise no_query(model)
    if not has_layout:
        raise UnsupportedModelError(
            f"{name} has a class token or pooling query, but not in a layout pytest-vitattn "
            f"has been verified on (a blocks list over a patch embedding), so it refuses "
            f"rather than risk a wrong map. {_WHAT_WORKS}"
        )
    _check_patch_embed(model, name)
    family = _FAMILY_OF_CLASS.get(name, name.lower())
    if has_cls and query_source != "pool":
        sites, unread = _without_unread_blocks(model, _block_sites(model), prefix)
        named = [("cls", 0)]
        if getattr(model, "dist_token", None) is not None:
            named.append(("dist", 1))
        return _self_attention(family, sites, prefix, 0, tuple(named), unread_blocks=unread)
    if pool is not None:
        kind = site_kind(pool, f"{name}.attn_pool")
        if kind.queries != "latent":
            raise UnsupportedModelError(f"{name}.attn_pool is not a latent-query pooling")
        # The pool attends over the final patch tokens, and over the prefix tokens only
        # when the model says so (timm drops registers before the pool by default).
        # timm's Eva.pool hands every token (CLS included) to the pool.
        keeps_prefix = name == "Eva" or bool(getattr(model, "pool_include_prefix", False))
        site = AttentionSite("attn_pool", f"attn_pool.{kind.softmax_node}", 0)
        return families.pooling_query(
            "map-pool", site, pool, prefix if keeps_prefix else 0, patch_embed_grid
        )
    no_cls = (
        f"{no_cls_clause(model)}, so there is no CLS attention row to read; reading row 0 "
        f"would show another token's attention."
    )
    return _self_attention(
        f"{family}-registers",
        _block_sites(model),
        prefix,
        None,
        (),
        no_query_reason=(
            f"{no_cls} It has {prefix} register token(s): token=0..{prefix - 1} reads a "
            f"register token's attention instead (marker token=..., --vitattn-token)."
        ),
    )


def _check_query_source(model: nn.Module, name: str, query_source: str) -> None:
    """Refuse ``query_source='cls'``/``'pool'`` on a model that lacks that query."""
    has_cls = getattr(model, "cls_token", None) is not None or has_class_token(model)
    pool = getattr(model, "attn_pool", None)
    has = []
    if has_cls:
        has.append("a CLS token")
    if pool is not None:
        has.append(f"an attention-pooling query ({type(pool).__name__})")
    what = " and ".join(has) or "neither a CLS token nor an attention-pooling query"
    if query_source == "cls" and not has_cls:
        raise UnsupportedModelError(
            f"query_source='cls' was asked for, but {name} has no CLS token; it has {what}. "
            f"Use query_source='auto'"
            + (" or 'pool' (its pooling query)" if pool is not None else "")
            + "."
        )
    if query_source == "pool":
        if pool is None:
            raise UnsupportedModelError(
                f"query_source='pool' was asked for, but {name} has no attention-pooling "
                f"query (attn_pool); it has {what}. Use query_source='auto'"
                + (" or 'cls'" if has_cls else "")
                + "."
            )
        if name not in ("VisionTransformer", "Eva", "NaFlexVit"):
            raise UnsupportedModelError(
                f"query_source='pool' was asked for; {name} has {what}, but pytest-vitattn "
                f"reads the pooling query only of VisionTransformer, Eva (PE-core) and "
                f"NaFlexVit models. Use query_source='auto'."
            )
        if name == "NaFlexVit" and getattr(model.embeds, "cls_token", None) is not None:
            raise UnsupportedModelError(
                f"query_source='pool' was asked for; {name} has {what}, but pytest-vitattn "
                f"reads a NaFlexVit's pooling query only when it has no CLS token. Use "
                f"query_source='auto' or 'cls'."
            )


def _refuse_known_unreadable(model: nn.Module, name: str) -> None:
    """Models with a class token whose attention has no per-query CLS row."""
    if name == "CoaT":
        raise factorised(model, "FactorAttnConvRelPosEnc")


def _self_attention(
    family: str,
    sites: tuple[AttentionSite, ...],
    prefix: int,
    query_index: int | None,
    named: tuple[tuple[str, int], ...],
    no_query_reason: str = "",
    unread_blocks: tuple[int, ...] = (),
) -> Anatomy:
    return Anatomy(
        family=family,
        sites=sites,
        num_prefix_tokens=prefix,
        query_index=query_index,
        fast_path=True,
        num_queries=prefix,
        named_queries=named,
        # Rollout chains every block's attention; with blocks left unread it would skip them.
        has_rollout=not unread_blocks,
        grid_rule=patch_embed_grid,
        no_query_reason=no_query_reason,
        unread_blocks=unread_blocks,
    )


def _without_unread_blocks(
    model: nn.Module, sites: tuple[AttentionSite, ...], prefix: int
) -> tuple[tuple[AttentionSite, ...], tuple[int, ...]]:
    """Leaves out the blocks whose own mask keeps every prefix token from every patch
    (``zoo.MaskedBlock.prefix_reads_no_patch``), as class-attention models' patch blocks
    are left out; the other blocks become layers 0, 1, ... in order.

    Returns:
        The sites read, and the indices of the blocks left out.
    """
    from pytest_vitattn.zoo import MaskedBlock

    unread = tuple(
        index
        for index, block in enumerate(model.blocks)
        if isinstance(block, MaskedBlock) and block.prefix_reads_no_patch(prefix)
    )
    if not unread:
        return sites, ()
    name = type(model).__name__
    if len(unread) == len(model.blocks):
        raise UnsupportedModelError(
            f"every block of this {name} has a mask that keeps the CLS token from every "
            f"patch, so no CLS row has a map over the patches"
        )
    kept = [site for site in sites if site.layer not in unread]
    renumber = {layer: new for new, layer in enumerate(dict.fromkeys(s.layer for s in kept))}
    return tuple(replace(site, layer=renumber[site.layer]) for site in kept), unread


def _block_sites(model: nn.Module) -> tuple[AttentionSite, ...]:
    """One site per block (per parallel branch), each a token self-attention."""
    from timm.models.vision_transformer import ParallelThingsBlock

    name = type(model).__name__
    sites = []
    for layer, block in enumerate(model.blocks):
        path = f"blocks.{layer}"
        if isinstance(block, ParallelThingsBlock):
            branches = [(f"{path}.attns.{i}.attn", b.attn) for i, b in enumerate(block.attns)]
        elif hasattr(block, "attn"):
            branches = [(f"{path}.attn", block.attn)]
        else:
            branches = [(path, block)]  # parallel-scaling blocks compute attention themselves
        for module_path, module in branches:
            kind = site_kind(module, f"{name}.{module_path}")
            if kind.queries != "tokens":
                raise UnsupportedModelError(f"{name}.{module_path} is not token self-attention")
            sites.append(
                AttentionSite(module_path, f"{module_path}.{kind.softmax_node}", layer, kind.call)
            )
    if not sites:
        raise UnsupportedModelError(f"{name} has no transformer blocks. {_WHAT_WORKS}")
    return tuple(sites)


def _class_attention(model: nn.Module, name: str) -> Anatomy:
    """CaiT (``blocks_token_only``) and XCiT (``cls_attn_blocks``): class-attention blocks."""
    attr = "blocks_token_only" if hasattr(model, "blocks_token_only") else "cls_attn_blocks"
    blocks = getattr(model, attr)
    if blocks is None or getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(
            f"{name} was reset without its class token and class-attention blocks "
            f"(global_pool=''), so it has no CLS attention. {_WHAT_WORKS}"
        )
    sites = []
    for layer, block in enumerate(blocks):
        path = f"{attr}.{layer}.attn"
        kind = site_kind(block.attn, f"{name}.{path}")
        if kind.queries != "class":
            raise UnsupportedModelError(f"{name}.{path} is not class attention")
        sites.append(AttentionSite(path, f"{path}.{kind.softmax_node}", layer, kind.call))
    family = _FAMILY_OF_CLASS.get(name, name.lower())
    grid_rule = conv_stack_grid if family == "xcit" else patch_embed_grid
    return families.cls_only(family, sites, grid_rule, rollout=False)


def _check_patch_embed(model: nn.Module, name: str) -> None:
    from timm.layers import HybridEmbed, PatchEmbed

    if not isinstance(model.patch_embed, (PatchEmbed, HybridEmbed)):
        raise UnsupportedModelError(
            f"{name} embeds patches with {type(model.patch_embed).__name__}, whose patch grid "
            f"pytest-vitattn cannot read, so it cannot place attention on the image. "
            f"{_WHAT_WORKS}"
        )
