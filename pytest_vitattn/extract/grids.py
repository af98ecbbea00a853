"""Patch grids: how many patch rows and columns a model makes of an input of a given size.

The grid comes from the input and the patch embedding, not from ``patch_embed.grid_size``
alone: ``dynamic_img_size`` models accept other (also non-square) sizes.
"""

from __future__ import annotations

from torch import nn

from pytest_vitattn.errors import ImageError


def patch_embed_grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Grid of timm's ``PatchEmbed``: from the input when the model takes any size.

    Raises:
        ImageError: a fixed-size model is given an input of another size.
    """
    patch_embed = model.patch_embed
    if getattr(model, "dynamic_img_size", False):
        grid_h, grid_w = patch_embed.dynamic_feat_size(tuple(input_hw))
        if grid_h < 1 or grid_w < 1:
            raise ImageError(
                f"an input of {input_hw[0]}x{input_hw[1]} pixels is smaller than one patch "
                f"({_size(patch_embed.patch_size)})"
            )
        return int(grid_h), int(grid_w)
    expected = tuple(int(v) for v in patch_embed.img_size)
    if tuple(input_hw) != expected:
        raise ImageError(
            f"the input is {input_hw[0]}x{input_hw[1]} pixels, but the model was built for "
            f"{_size(expected)}: resize the input (the vitattn fixture does this from the "
            f"model's data config), or create the model with img_size=... or "
            f"dynamic_img_size=True"
        )
    grid_h, grid_w = patch_embed.grid_size
    return int(grid_h), int(grid_w)


def conv_stack_grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Grid of a patch embedding made of strided convolutions (XCiT), for any input size."""
    height, width = input_hw
    for conv in model.patch_embed.modules():
        if isinstance(conv, nn.Conv2d):
            height = _conv_out(height, conv, 0)
            width = _conv_out(width, conv, 1)
    if height < 1 or width < 1:
        raise ImageError(f"an input of {input_hw[0]}x{input_hw[1]} pixels is too small")
    return height, width


def _conv_out(size: int, conv: nn.Conv2d, axis: int) -> int:
    padding = conv.padding[axis] if isinstance(conv.padding, tuple) else 0
    span = conv.dilation[axis] * (conv.kernel_size[axis] - 1) + 1
    return (size + 2 * padding - span) // conv.stride[axis] + 1


def _size(hw: tuple[int, int] | int) -> str:
    if isinstance(hw, int):
        return f"{hw}x{hw}"
    return f"{hw[0]}x{hw[1]}"
