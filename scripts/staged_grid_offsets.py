"""How far each layer's grid cells sit from their tokens' receptive-field centres (PiT, MViTv2).

Maps and masks treat every layer's grid as an even tiling of the model input (cell i of n
spans input pixels [i * size / n, (i + 1) * size / n)), as for every family. Where a grid was
made by strided convolutions or pooling with padding, a token's window is centred elsewhere:
this script follows the centres through the model's own modules (centre of output k = centre
of input k * stride - padding + (kernel - 1) / 2) and prints, per distinct grid, the largest
distance in pixels between a token's window centre and its cell's centre. Usage::

    OMP_NUM_THREADS=1 python scripts/staged_grid_offsets.py [MODEL ...]
"""

from __future__ import annotations

import sys

from torch import nn


def _pairs(module: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    def pair(value):
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    return pair(module.kernel_size), pair(module.stride), pair(module.padding)


def _through(line: tuple[float, float], module: nn.Module | None, axis: int) -> tuple:
    """(a, b) of centre(i) = a + b * i, after ``module`` (None: unchanged)."""
    if module is None:
        return line
    kernel, stride, padding = (value[axis] for value in _pairs(module))
    a, b = line
    return a + b * (-padding + (kernel - 1) / 2), b * stride


def key_lines(model: nn.Module) -> list[tuple[tuple, tuple]]:
    """Per layer, the (a, b) centre lines of the key grid's rows and columns, in pixels."""
    pixel = (0.5, 1.0)  # pixel i's centre, in pixel units
    name = type(model).__name__
    lines = []
    if name == "PoolingVisionTransformer":
        rows = _through(pixel, model.patch_embed.conv, 0)
        cols = _through(pixel, model.patch_embed.conv, 1)
        for stage in model.transformers:
            if stage.pool is not None:
                rows, cols = _through(rows, stage.pool.conv, 0), _through(cols, stage.pool.conv, 1)
            lines.extend([(rows, cols)] * len(stage.blocks))
    elif name == "MultiScaleVit":
        rows = _through(pixel, model.patch_embed.proj, 0)
        cols = _through(pixel, model.patch_embed.proj, 1)
        for stage in model.stages:
            for block in stage.blocks:
                pool_k, pool_q = block.attn.pool_k, block.attn.pool_q
                lines.append((_through(rows, pool_k, 0), _through(cols, pool_k, 1)))
                rows, cols = _through(rows, pool_q, 0), _through(cols, pool_q, 1)
    else:
        raise SystemExit(f"{name} has no staged grid")
    return lines


def _ranges(layers: list[int]) -> str:
    """[0, 2, 4, 5, 6] -> "0, 2, 4-6"."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and runs[-1][1] == layer - 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def main(argv: list[str]) -> int:
    import timm
    import torch

    from pytest_vitattn.extract import describe

    torch.set_num_threads(1)
    for name in argv or ["pit_ti_224", "mvitv2_small_cls"]:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        size = tuple(model.pretrained_cfg["input_size"][1:])
        grids = describe(model).layout(model, size).layer_grids
        print(f"{name} at {size[0]}x{size[1]}:")
        seen = {}
        for layer, ((rows, cols), grid) in enumerate(zip(key_lines(model), grids, strict=True)):
            worst = 0.0
            for (a, b), count, extent in ((rows, grid[0], size[0]), (cols, grid[1], size[1])):
                cell = extent / count
                for index in range(count):
                    worst = max(worst, abs(a + b * index - (index + 0.5) * cell))
            key = (grid, round(worst, 2))
            seen.setdefault(key, []).append(layer)
        for (grid, worst), layers in seen.items():
            cell = size[1] / grid[1]
            print(
                f"  layers {_ranges(layers)}: {grid[0]}x{grid[1]} cells of {cell:.1f} px; "
                f"token window centres up to {worst:.1f} px from their cell's centre"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
