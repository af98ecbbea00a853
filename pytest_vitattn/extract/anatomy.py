"""Where a model keeps its CLS attention: the attention sites, the queries and the token layout.

Everything about token layout is read from the model (``num_prefix_tokens``, the patch
embedding), never written as ``1:`` or ``14``: those break on distillation tokens, register
tokens and non-square inputs. ``describe`` (in ``extract.describe``) builds an ``Anatomy``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pytest_vitattn.errors import AttentionValueError, UnsupportedModelError

GridRule = Callable[[nn.Module, tuple[int, int]], tuple[int, int]]
LayerGridRule = Callable[[nn.Module, tuple[int, int]], tuple[tuple[int, int], ...]]


@dataclass(frozen=True)
class AttentionSite:
    """One attention module whose softmax this package reads.

    Attributes:
        module_path: dotted path of the module that computes the attention, e.g.
            ``"blocks.3.attn"`` (``"blocks.3"`` for parallel blocks, ``"attn_pool"``).
        fx_node: torch.fx node whose output is that module's softmax
            (batch, heads, queries, tokens), e.g. ``"blocks.3.attn.attn_drop"``.
        layer: the layer this site belongs to; sites of one layer (parallel attention
            branches) are read as one layer with their heads side by side.
        call: "sdpa" or "softmax": what the fast path observes (see ``sites.SiteKind``).
    """

    module_path: str
    fx_node: str
    layer: int
    call: str = "sdpa"


@dataclass(frozen=True)
class TokenLayout:
    """How the token sequence of one forward pass is laid out.

    Attributes:
        num_prefix_tokens: tokens before the patches (CLS, distillation, registers).
        query_index: index of the query whose attention row is read (0 is CLS).
        grid: (grid_h, grid_w) patch grid of this input (for a model whose grid changes
            between layers: the patch embedding's grid; ``layer_grids`` has every layer's).
        layer_grids: for models whose grid changes between layers (PiT, MViTv2), the
            (grid_h, grid_w) of the keys each layer's query attends over; None when every
            layer attends over ``grid``.
    """

    num_prefix_tokens: int
    query_index: int
    grid: tuple[int, int]
    layer_grids: tuple[tuple[int, int], ...] | None = None

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def ragged(self) -> bool:
        """Whether the layers attend over grids of different sizes (``layer_grids``)."""
        return self.layer_grids is not None

    def grid_of(self, layer: int) -> tuple[int, int]:
        """The patch grid layer ``layer`` attends over."""
        return self.grid if self.layer_grids is None else self.layer_grids[layer]


@dataclass(frozen=True)
class Anatomy:
    """The parts of a model that CLS attention extraction needs.

    Attributes:
        family: short name of the model family, e.g. ``"vit"``, ``"cait"``, ``"map-pool"``.
        sites: attention sites in forward order.
        num_prefix_tokens: tokens before the patches in the keys of every site.
        query_index: the query row read by default (0: the CLS token, or the attention-pool
            query), or None when the model has no CLS-like query (``no_query_reason`` says why).
        fast_path: whether rows can be computed from the q and k that each site hands to
            the fused attention kernel (see ``extract.fast``).
        num_queries: query rows that may be read: indices 0 .. num_queries - 1.
        named_queries: names users may give for query rows, e.g. ``(("cls", 0), ("dist", 1))``.
        has_rollout: whether attention rollout is defined (square self-attention over the
            same tokens in every layer; not for class attention or attention pooling).
        grid_rule: (model, (height, width)) -> (grid_h, grid_w) patch grid of an input.
        no_query_reason: why there is no default query, with what to do instead.
        layer_grid_rule: for models whose grid changes between layers (PiT, MViTv2):
            (model, (height, width)) -> each layer's (grid_h, grid_w); None otherwise.
        unread_blocks: indices in ``model.blocks`` of blocks that are not read because
            their own fixed mask keeps every prefix token from every patch
            (``pytest_vitattn.zoo.MaskedBlock``): their CLS row has no map over the patches.
    """

    family: str
    sites: tuple[AttentionSite, ...]
    num_prefix_tokens: int
    query_index: int | None
    fast_path: bool
    num_queries: int
    named_queries: tuple[tuple[str, int], ...]
    has_rollout: bool
    grid_rule: GridRule
    no_query_reason: str = ""
    layer_grid_rule: LayerGridRule | None = None
    unread_blocks: tuple[int, ...] = ()

    @property
    def num_layers(self) -> int:
        return len({site.layer for site in self.sites})

    @property
    def layer_blocks(self) -> tuple[int, ...] | None:
        """The index in ``model.blocks`` of each layer, e.g. ``(5,)`` when only block 5 is
        read; None unless every layer is one block of ``model.blocks`` of its own (class
        attention, attention pooling, CrossViT's nested blocks, a transformers model)."""
        blocks = []
        for layer in range(self.num_layers):
            found = {_block_index(s.module_path) for s in self.sites if s.layer == layer}
            if len(found) != 1 or None in found:
                return None
            blocks.append(found.pop())
        if len(set(blocks)) != len(blocks):
            return None
        return tuple(blocks)  # type: ignore[arg-type]

    @property
    def blocks_read(self) -> tuple[int, ...] | None:
        """``layer_blocks`` where it is not simply 0, 1, 2, ... (blocks were left out, e.g.
        ``(5,)``, or ConViT's ``(10, 11)``): what labels name; None otherwise."""
        blocks = self.layer_blocks
        return None if blocks is None or blocks == tuple(range(len(blocks))) else blocks

    def layout(
        self, model: nn.Module, input_hw: tuple[int, int], query_index: int | None = None
    ) -> TokenLayout:
        """The token layout of ``model`` for an input of ``input_hw`` = (height, width).

        Args:
            query_index: the query row to read; None for the default (CLS) query.

        Raises:
            UnsupportedModelError: no default query (see ``no_query_reason``).
            AttentionValueError: ``query_index`` is out of range.
        """
        layer_grids = None
        if self.layer_grid_rule is not None:
            layer_grids = tuple(self.layer_grid_rule(model, input_hw))
        return TokenLayout(
            self.num_prefix_tokens,
            self.resolve_query(query_index),
            self.grid_rule(model, input_hw),
            layer_grids,
        )

    def resolve_query(self, token: str | int | None, model_name: str = "the model") -> int:
        """The query row for ``token``: None (the default), a name ("cls", "dist") or an index.

        Raises:
            UnsupportedModelError: the model has no such query token.
        """
        names = dict(self.named_queries)
        if token is None or token == "cls":
            if self.query_index is None:
                raise UnsupportedModelError(self.no_query_reason)
            return self.query_index
        if isinstance(token, str):
            if token in names:
                return names[token]
            have = ", ".join(f"token={name!r}" for name in names) or "integer indices"
            raise UnsupportedModelError(
                f"token={token!r} was asked for, but {model_name} has no such token; "
                f"it offers {have}"
            )
        index = int(token)
        if not 0 <= index < self.num_queries:
            raise AttentionValueError(
                f"token={index} is not a query token of {model_name}, which has "
                f"{self.num_queries} (indices 0..{self.num_queries - 1})"
                if self.num_queries
                else f"token={index} was asked for, but {model_name} has no query tokens"
            )
        return index


# The attention of block N itself: "blocks.N.attn", a parallel branch "blocks.N.attns.K.attn",
# or "blocks.N" (blocks that compute attention themselves); not blocks nested in blocks.
_BLOCK_ATTENTION = re.compile(r"blocks\.(\d+)(?:\.attns\.\d+)?(?:\.attn)?")


def _block_index(module_path: str) -> int | None:
    """``"blocks.5.attn"`` -> 5; None for a module that is not one block's attention."""
    match = _BLOCK_ATTENTION.fullmatch(module_path)
    return int(match.group(1)) if match else None
