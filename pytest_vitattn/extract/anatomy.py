"""Where a timm ViT keeps its CLS attention: the attention modules and the token layout.

Everything about token layout is read from the model (``num_prefix_tokens``, the patch
embedding's grid), never written as ``1:`` or ``14``: those break on distillation tokens,
register tokens and non-square inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pytest_vitattn.errors import UnsupportedModelError

_NO_TOKEN_ATTENTION_HINT = (
    "pytest-vitattn reads the attention of the CLS token over image patches, which needs a "
    "ViT-style model with a class token (e.g. vit_*, deit_*, the shipped vitattn_tiny_shapes)."
)


@dataclass(frozen=True)
class AttentionSite:
    """One attention module whose softmax this package reads.

    Attributes:
        module_path: dotted path of the attention module, e.g. ``"blocks.3.attn"``.
        fx_node: torch.fx node whose output is that module's softmax matrix
            (batch, heads, tokens, tokens), e.g. ``"blocks.3.attn.attn_drop"``.
    """

    module_path: str
    fx_node: str


@dataclass(frozen=True)
class TokenLayout:
    """How the token sequence of one forward pass is laid out.

    Attributes:
        num_prefix_tokens: tokens before the patches (CLS, distillation, registers).
        query_index: index of the token whose attention row is read (0 is CLS).
        grid: (grid_h, grid_w) patch grid of this input.
    """

    num_prefix_tokens: int
    query_index: int
    grid: tuple[int, int]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches


@dataclass(frozen=True)
class Anatomy:
    """The parts of a model that CLS attention extraction needs.

    Attributes:
        family: a short name of the model family, shown in records.
        sites: attention modules in forward order, one per layer.
        num_prefix_tokens: tokens before the patches.
        query_index: the prefix token whose row is read by default (0, the CLS token).
        fast_path: whether the CLS rows can be computed from q and k while the model keeps
            its fused attention (see ``extract.fast``).
    """

    family: str
    sites: tuple[AttentionSite, ...]
    num_prefix_tokens: int
    query_index: int
    fast_path: bool

    @property
    def num_layers(self) -> int:
        return len(self.sites)

    def layout(self, model: nn.Module, input_hw: tuple[int, int]) -> TokenLayout:
        """The token layout of ``model`` for an input of ``input_hw`` = (height, width)."""
        patch_embed = model.patch_embed
        if getattr(model, "dynamic_img_size", False):
            grid = tuple(int(g) for g in patch_embed.dynamic_feat_size(input_hw))
        else:
            grid = tuple(int(g) for g in patch_embed.grid_size)
        return TokenLayout(self.num_prefix_tokens, self.query_index, grid)


def describe(model: nn.Module) -> Anatomy:
    """Find the CLS attention sites of a timm model, or refuse with the reason.

    Raises:
        UnsupportedModelError: the model has no token attention or no CLS token.
    """
    from timm.layers import Attention

    name = type(model).__name__
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed"):
        raise UnsupportedModelError(
            f"{name} has no transformer blocks with token attention. {_NO_TOKEN_ATTENTION_HINT}"
        )
    if getattr(model, "cls_token", None) is None:
        raise UnsupportedModelError(
            f"{name} has no CLS token (class_token=False, e.g. a *_gap_* model), so there is "
            f"no CLS attention row to read; reading row 0 would show a patch's attention "
            f"instead. {_NO_TOKEN_ATTENTION_HINT}"
        )
    sites = []
    for index, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, Attention):
            raise UnsupportedModelError(
                f"{name} block {index} uses {type(attn).__name__}, not timm's token "
                f"attention, so its CLS attention cannot be read. {_NO_TOKEN_ATTENTION_HINT}"
            )
        sites.append(AttentionSite(f"blocks.{index}.attn", f"blocks.{index}.attn.attn_drop"))
    return Anatomy(
        family="vit",
        sites=tuple(sites),
        num_prefix_tokens=int(model.num_prefix_tokens),
        query_index=0,
        fast_path=True,
    )
