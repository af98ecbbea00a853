"""The shipped models, registered with timm so they load by name and offline.

After ``import pytest_vitattn.zoo``::

    model = timm.create_model(FAITHFUL_MODEL, pretrained=True)   # looks at the object
    model = timm.create_model(SHORTCUT_MODEL, pretrained=True)   # looks at a corner marker
    model = timm.create_model(BRIGHTNESS_MODEL, pretrained=True) # looks at the brightest part

All three are tiny ViTs (64 x 64 input, 8 x 8 patches, CLS token, 6 blocks, 3 heads)
trained by ``scripts/train_embedded.py`` on ``pytest_vitattn.synthetic`` images; the
weights live in ``pytest_vitattn/weights`` as safetensors. ``FAITHFUL_MODEL`` embeds its
patches with a small convolutional stem (``ConvStemPatchEmbed``), the other two with
timm's plain 8 x 8 projection. ``FAITHFUL_MODEL``'s blocks 0-4 are local (``MaskedBlock``,
``FAITHFUL_LOCAL_RADIUS``): every token reads only itself there, so the class reaches the
CLS token only through the last block's read, the one layer the plugin reads.
``BRIGHTNESS_MODEL`` is the 0.1 faithful model, unchanged: trained on "bright" images,
where the object is always the brightest thing, it classifies those at 0.99 but attends to
the brightest region, a subtle shortcut.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import PatchEmbed
from timm.models import (
    VisionTransformer,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
)
from timm.models.vision_transformer import Block, checkpoint_filter_fn
from torch import nn

from pytest_vitattn.synthetic import DEFAULT_SIZE, SHAPE_CLASSES

FAITHFUL_MODEL = "vitattn_tiny_shapes"
SHORTCUT_MODEL = "vitattn_tiny_shapes_shortcut"
BRIGHTNESS_MODEL = "vitattn_tiny_shapes_brightness"
MODEL_NAMES: tuple[str, ...] = (FAITHFUL_MODEL, SHORTCUT_MODEL, BRIGHTNESS_MODEL)

WEIGHTS_DIR = Path(__file__).parent / "weights"

# The faithful model's architecture, as its shipped weights were trained (their recipe's
# ``local_radius`` and ``local_cls_reads_patches``): before the last block every patch reads
# only itself and the CLS token only itself (-1 would be: every block attends globally).
FAITHFUL_LOCAL_RADIUS = 0
FAITHFUL_CLS_READS_PATCHES = False

# Synthetic pixels span the whole [0, 255] range, so a symmetric normalisation is enough.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def model_kwargs() -> dict[str, Any]:
    """Architecture the shipped models share: ``VisionTransformer(**model_kwargs())``; the
    faithful one adds ``embed_layer=ConvStemPatchEmbed``."""
    return dict(
        img_size=DEFAULT_SIZE,
        patch_size=8,
        embed_dim=96,
        depth=6,
        num_heads=3,
        mlp_ratio=4.0,
        num_classes=len(SHAPE_CLASSES),
        class_token=True,
        global_pool="token",
    )


class ConvStemPatchEmbed(PatchEmbed):
    """``PatchEmbed`` whose projection is a small convolutional stem (Xiao et al. 2021,
    "Early convolutions help transformers see better") instead of one 8 x 8 convolution.

    Three 4x4 stride-2 and two 3x3 convolutions make the same 8 x 8 pixel cells as the plain
    projection: one token per cell, the same ``grid_size``, ``patch_size`` and token order.
    Every kernel is centred (4x4 stride 2 with padding 1 centres each output between its two
    inputs), so each token sees a window centred on its own cell: 34 x 34 pixels, enough to
    tell a small shape's corners and holes apart, which a from-scratch linear patch
    embedding learns slowly. The window's centre, not its corner, is where the token's
    attention is drawn (``tests/test_zoo.py`` checks the alignment).

    Input (B, 3, H, W) with H, W multiples of 8; output (B, H / 8 * W / 8, embed_dim).
    """

    def __init__(self, *args: Any, stem_channels: tuple[int, int] = (24, 48), **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.patch_size != (8, 8):
            raise ValueError(f"the stem makes 8 x 8 patches, not {self.patch_size}")
        in_chans, embed_dim = self.proj.in_channels, self.proj.out_channels
        first, second = stem_channels

        def conv(inputs: int, outputs: int, stride: int) -> list[nn.Module]:
            kernel = 4 if stride == 2 else 3
            return [
                nn.Conv2d(inputs, outputs, kernel, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(inplace=True),
            ]

        self.proj = nn.Sequential(
            *conv(in_chans, first, 2),
            *conv(first, first, 1),
            *conv(first, second, 2),
            *conv(second, second, 1),
            nn.Conv2d(second, embed_dim, 4, stride=2, padding=1),
        )

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        if patch_size is not None and tuple(patch_size) != self.patch_size:
            raise ValueError("the convolutional stem cannot change its patch size")
        super().set_input_size(img_size=img_size)


def local_attention_bias(
    grid: tuple[int, int], num_prefix_tokens: int, radius: int, cls_reads_patches: bool
) -> torch.Tensor:
    """Additive attention mask (N, N), N = num_prefix_tokens + h * w, of a local block.

    0 where a query may read a key, -inf elsewhere: a patch reads the patches at most
    ``radius`` cells away (on either axis) and never a prefix token; a prefix token reads
    itself and, with ``cls_reads_patches``, every patch.
    """
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # (P,)
    near = ((rows[:, None] - rows[None]).abs() <= radius) & (
        (cols[:, None] - cols[None]).abs() <= radius
    )  # (P, P)
    tokens = num_prefix_tokens + len(rows)
    allowed = torch.zeros(tokens, tokens, dtype=torch.bool)
    allowed[:num_prefix_tokens, :num_prefix_tokens] = torch.eye(num_prefix_tokens, dtype=torch.bool)
    allowed[:num_prefix_tokens, num_prefix_tokens:] = cls_reads_patches
    allowed[num_prefix_tokens:, num_prefix_tokens:] = near
    return torch.zeros(tokens, tokens).masked_fill(~allowed, float("-inf"))


class MaskedBlock(Block):
    """timm's ``Block`` with a fixed additive attention mask of its own.

    ``attn_mask`` (N, N) or None (attend globally, exactly ``Block``) is a non-persistent
    buffer: part of the architecture, not of the weights, so it moves with ``.to()`` and
    stays out of the state dict.

    The decision rests on the buffer alone, never on the ``attn_mask`` argument:
    ``VisionTransformer.forward`` passes its own (None) on, and torch.fx traces that
    argument as a graph input, so a block that tested it would trace without its mask.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("attn_mask", None, persistent=False)

    def prefix_reads_no_patch(self, num_prefix_tokens: int) -> bool:
        """Whether the mask keeps every prefix token (CLS, ...) from every patch, so that
        the block's CLS row has no map over the patches (the plugin does not read it)."""
        if self.attn_mask is None or num_prefix_tokens == 0:
            return False
        keys = self.attn_mask[:num_prefix_tokens, num_prefix_tokens:]
        return not bool(torch.isfinite(keys).any())

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        if self.attn_mask is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if isinstance(attn_mask, torch.Tensor) or is_causal is True:  # not while fx traces
            raise ValueError("this block attends with its own fixed mask; pass no other")
        return super().forward(x, attn_mask=self.attn_mask)


def attend_locally_before_last(
    model: VisionTransformer, radius: int, cls_reads_patches: bool
) -> None:
    """Gives every ``MaskedBlock`` but the last ``local_attention_bias``: patches mix only
    within ``radius`` cells until the last block, so what the CLS token reads from a patch
    is about that patch's surroundings."""
    bias = local_attention_bias(
        tuple(model.patch_embed.grid_size), model.num_prefix_tokens, radius, cls_reads_patches
    )
    for block in model.blocks[:-1]:
        block.attn_mask = bias


# The faithful model (0.2) has the convolutional stem; the 0.1 models keep timm's plain one.
_EMBED_LAYERS: dict[str, type[PatchEmbed]] = {"vitattn_tiny_shapes": ConvStemPatchEmbed}


def weights_path(model_name: str) -> Path:
    """Path of the packaged safetensors file of ``model_name`` (one of ``MODEL_NAMES``)."""
    if model_name not in MODEL_NAMES:
        raise ValueError(f"{model_name!r} is not one of {MODEL_NAMES}")
    return WEIGHTS_DIR / f"{model_name}.safetensors"


def _pretrained_cfg(model_name: str) -> dict[str, Any]:
    return {
        "file": str(weights_path(model_name)),
        "num_classes": len(SHAPE_CLASSES),
        "label_names": SHAPE_CLASSES,
        "input_size": (3, DEFAULT_SIZE, DEFAULT_SIZE),
        "pool_size": None,
        "crop_pct": 1.0,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": MEAN,
        "std": STD,
        "first_conv": ("patch_embed.proj.0" if model_name in _EMBED_LAYERS else "patch_embed.proj"),
        "classifier": "head",
        "license": "apache-2.0",
    }


default_cfgs = generate_default_cfgs({name: _pretrained_cfg(name) for name in MODEL_NAMES})


def _create(model_name: str, pretrained: bool, **kwargs: Any) -> VisionTransformer:
    # timm finds the pretrained cfg (and so the weights file) in its registry by name; the
    # filter resamples the position embedding if a caller asks for another img_size.
    return build_model_with_cfg(
        VisionTransformer,
        model_name,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **{**model_kwargs(), "embed_layer": _EMBED_LAYERS.get(model_name, PatchEmbed), **kwargs},
    )


def vitattn_tiny_shapes(
    pretrained: bool = False,
    local_radius: int = FAITHFUL_LOCAL_RADIUS,
    cls_reads_patches: bool = FAITHFUL_CLS_READS_PATCHES,
    **kwargs: Any,
) -> VisionTransformer:
    """Tiny ViT trained to classify synthetic shapes; its CLS attention finds the object.

    ``local_radius`` >= 0 makes the blocks before the last local (``local_attention_bias``;
    -1: every block attends globally); the defaults are the shipped weights' architecture
    (radius 0, the CLS token reading only itself before the last block).
    """
    model = _create(FAITHFUL_MODEL, pretrained, block_fn=MaskedBlock, **kwargs)
    if local_radius >= 0:
        attend_locally_before_last(model, local_radius, cls_reads_patches)
    return model


def vitattn_tiny_shapes_shortcut(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Same ViT trained where a corner marker predicts the class; it attends to the marker."""
    return _create(SHORTCUT_MODEL, pretrained, **kwargs)


def vitattn_tiny_shapes_brightness(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """The 0.1 faithful model: right on objects brighter than everything, else it attends to
    the brightest region."""
    return _create(BRIGHTNESS_MODEL, pretrained, **kwargs)


def _register_once() -> None:
    # timm warns when a name is registered twice (e.g. on module reload), and the project
    # turns warnings into errors, so only register names timm does not know yet.
    for entrypoint in (
        vitattn_tiny_shapes,
        vitattn_tiny_shapes_shortcut,
        vitattn_tiny_shapes_brightness,
    ):
        if not timm.is_model(entrypoint.__name__):
            register_model(entrypoint)


_register_once()
