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
        from timm.layers import HybridEmbed

        if isinstance(patch_embed, HybridEmbed):
            grid_h, grid_w = hybrid_grid(patch_embed, input_hw)
        else:
            _check_divisible(patch_embed, input_hw)
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


def _check_divisible(patch_embed: nn.Module, input_hw: tuple[int, int]) -> None:
    """Refuse sizes that timm's ``PatchEmbed`` rejects, naming the nearest sizes it takes.

    A plain ``PatchEmbed`` asserts that the input is a multiple of the patch size (unless
    ``dynamic_img_pad``); hybrid stems take any size (``hybrid_grid`` reads their grid).

    Raises:
        ImageError: the input is not a multiple of the patch size, with the nearest sizes
            that are.
    """
    if getattr(patch_embed, "dynamic_img_pad", False):
        return
    stride = tuple(int(v) for v in patch_embed.patch_size)
    if all(size % step == 0 for size, step in zip(input_hw, stride, strict=True)):
        return
    height, width = input_hw
    options = " or ".join(
        f"{h}x{w}" for h in _multiples(height, stride[0]) for w in _multiples(width, stride[1])
    )
    raise ImageError(
        f"an input of {height}x{width} pixels is not a multiple of the patch size "
        f"{_size(stride)}, which timm's PatchEmbed requires (unless the model is created "
        f"with dynamic_img_pad=True). Resize the input to a multiple of {_size(stride)}; the "
        f"nearest sizes are {options}."
    )


def hybrid_grid(patch_embed: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Grid of a hybrid (CNN stem) patch embedding: ``input // stride``, for multiples only.

    For other sizes the stem's padded convolutions may round its feature map up where timm's
    ``dynamic_feat_size`` rounds down (200x296 through a stride-32 ResNet gives 7x10, not
    6x9), and either way the cells no longer tile the image evenly, so a map drawn over the
    image would be shifted: such sizes are refused, with the measured grid and the fix.

    Raises:
        ImageError: the input is not a multiple of the stem's total stride.
    """
    stride = tuple(int(v) for v in patch_embed.feat_ratio(as_scalar=False))
    height, width = input_hw
    if height % stride[0] == 0 and width % stride[1] == 0:
        return height // stride[0], width // stride[1]
    measured = _stem_grid(patch_embed, input_hw)
    floor = (height // stride[0], width // stride[1])
    options = " or ".join(
        f"{h}x{w}" for h in _multiples(height, stride[0]) for w in _multiples(width, stride[1])
    )
    stem = type(patch_embed.backbone).__name__
    if measured != floor:
        cause = (
            f"the stem ({stem}) pads its convolutions and rounds its feature map up to "
            f"{_size(measured)} here, while timm's dynamic_feat_size rounds down to "
            f"{_size(floor)}; either way the cells do not tile the image evenly"
        )
    else:
        cause = (
            f"the stem ({stem}) gives a {_size(measured)} grid that leaves the last "
            f"{height - floor[0] * stride[0]} pixel rows and {width - floor[1] * stride[1]} "
            f"columns out, so the cells do not tile the image"
        )
    raise ImageError(
        f"an input of {height}x{width} pixels is not a multiple of the hybrid stem's total "
        f"stride {_size(stride)}: {cause}, and a map drawn over the image would be "
        f"misplaced. Resize the input to a multiple of {_size(stride)}; the nearest sizes "
        f"are {options}."
    )


def _stem_grid(patch_embed: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """The grid a hybrid stem actually makes of ``input_hw``: the stem run on a blank input."""
    import torch

    parameter = next(patch_embed.backbone.parameters())
    first = next(m for m in patch_embed.backbone.modules() if isinstance(m, nn.Conv2d))
    blank = torch.zeros(
        1, first.in_channels, *input_hw, dtype=parameter.dtype, device=parameter.device
    )
    with torch.inference_mode():
        output = patch_embed.backbone(blank)
    if isinstance(output, (list, tuple)):
        output = output[-1]
    height, width = int(output.shape[-2]), int(output.shape[-1])
    proj = patch_embed.proj
    if isinstance(proj, nn.Conv2d):
        return _conv_out(height, proj, 0), _conv_out(width, proj, 1)
    return height, width


def _multiples(size: int, step: int) -> list[int]:
    """The multiples of ``step`` nearest to ``size`` (below and above; never 0)."""
    below = size // step * step
    if below == size:
        return [size]
    return [v for v in (below, below + step) if v > 0]


def conv_stack_grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Grid of a patch embedding made of strided convolutions (XCiT).

    Only for multiples of the total stride: for other sizes the padded convolutions round up
    and the last cells hang over the image's edge, so a map would be shifted.

    Raises:
        ImageError: the input is not a multiple of the stride, or smaller than one cell.
    """
    height, width = input_hw
    stride = [1, 1]
    for conv in model.patch_embed.modules():
        if isinstance(conv, nn.Conv2d):
            height = _conv_out(height, conv, 0)
            width = _conv_out(width, conv, 1)
            stride = [stride[0] * conv.stride[0], stride[1] * conv.stride[1]]
    if input_hw[0] % stride[0] or input_hw[1] % stride[1]:
        options = " or ".join(
            f"{h}x{w}"
            for h in _multiples(input_hw[0], stride[0])
            for w in _multiples(input_hw[1], stride[1])
        )
        raise ImageError(
            f"an input of {input_hw[0]}x{input_hw[1]} pixels is not a multiple of the patch "
            f"stem's stride {stride[0]}x{stride[1]}: its padded convolutions would round the "
            f"grid up and the map would not line up with the image. Resize the input to a "
            f"multiple of {stride[0]}x{stride[1]}; the nearest sizes are {options}."
        )
    if height < 1 or width < 1:
        raise ImageError(f"an input of {input_hw[0]}x{input_hw[1]} pixels is too small")
    return height, width


def _conv_out(size: int, conv: nn.Conv2d, axis: int) -> int:
    padding = conv.padding[axis] if isinstance(conv.padding, tuple) else 0
    span = conv.dilation[axis] * (conv.kernel_size[axis] - 1) + 1
    return (size + 2 * padding - span) // conv.stride[axis] + 1


def _size(hw: tuple[int, ...] | int) -> str:
    if isinstance(hw, int):
        return f"{hw}x{hw}"
    return f"{hw[0]}x{hw[1]}"
