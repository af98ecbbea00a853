"""An architecture experiment: blocks before the last that attend only locally.

With ``attend_locally_before_last(model, radius)`` every block but the last lets a patch read
only the patches at most ``radius`` cells away and keeps the CLS token to itself, so the class
can reach the CLS token only through the last layer's read. ``train_embedded.py
--faithful-local-blocks R`` trains such a model and ``evaluate_embedded.py
--faithful-local-blocks R`` scores it; the shipped models have no such mask.
"""

from __future__ import annotations

import torch


def local_attention_bias(
    grid: tuple[int, int], num_prefix_tokens: int, radius: int
) -> torch.Tensor:
    """Additive attention mask (N, N) for the blocks before the last with ``local_radius``:
    0 where a patch may read a patch at most ``radius`` cells away (either axis), -inf
    elsewhere; a prefix token reads only itself and no patch reads a prefix token, so the
    class can reach the CLS token only in the last block."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()  # (P,)
    near = ((rows[:, None] - rows[None]).abs() <= radius) & (
        (cols[:, None] - cols[None]).abs() <= radius
    )  # (P, P)
    tokens = num_prefix_tokens + len(rows)
    allowed = torch.zeros(tokens, tokens, dtype=torch.bool)
    allowed[:num_prefix_tokens, :num_prefix_tokens] = torch.eye(num_prefix_tokens, dtype=torch.bool)
    allowed[num_prefix_tokens:, num_prefix_tokens:] = near
    return torch.zeros(tokens, tokens).masked_fill(~allowed, float("-inf"))


def attend_locally_before_last(model: torch.nn.Module, radius: int) -> None:
    """Makes every block but the last run with ``local_attention_bias`` (forward pre-hooks,
    kept for the model's life, validation included)."""
    bias = local_attention_bias(tuple(model.patch_embed.grid_size), model.num_prefix_tokens, radius)
    for block in model.blocks[:-1]:
        block.register_forward_pre_hook(
            lambda _block, args, kwargs: (args, {**kwargs, "attn_mask": bias}), with_kwargs=True
        )
