"""How much a model's class depends on what its last layer's CLS token reads.

The last block's CLS query is kept from some tokens (an additive -inf on those columns of its
attention row; every other row, and every other block, is untouched) and the accuracy is
measured again. A model whose accuracy survives while its last-layer CLS token reads nothing
but itself decided the class in earlier blocks: its last-layer map is not where the decision
is made, and how well it lies on the object is left to chance (README, "The shipped models").

    python scripts/evaluate_embedded.py    # prints this table among the others
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from evaluate_embedded import mask_fractions, to_model_input
from stress_splits import SplitImages

# What the last layer's CLS token may read, besides the prefix tokens (itself, registers):
# a function of the object's patch fractions (B, grid_h, grid_w) -> allowed patches (B, P).
READINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "every patch (as trained)": lambda fractions: torch.ones_like(fractions).flatten(1).bool(),
    "no patch": lambda fractions: torch.zeros_like(fractions).flatten(1).bool(),
    "the patches the object touches": lambda fractions: (fractions > 0).flatten(1),
    "only patches > 1 cell from the object": lambda fractions: (
        F.max_pool2d((fractions > 0).float()[:, None], 3, stride=1, padding=1)[:, 0] == 0
    ).flatten(1),
}


def cls_row_bias(allowed_patches: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Additive attention mask (B, 1, N, N): -inf where the CLS row (row 0) may not read a
    patch, 0 elsewhere; the prefix columns stay readable, so no row is empty.

    Args:
        allowed_patches: (B, P) bool, P = N - num_prefix_tokens.
    """
    batch, patches = allowed_patches.shape
    tokens = num_prefix_tokens + patches
    bias = torch.zeros(batch, 1, tokens, tokens)
    bias[:, 0, 0, num_prefix_tokens:] = torch.where(allowed_patches, 0.0, float("-inf"))
    return bias


@torch.no_grad()
def logits_with_last_layer_reading(
    model: torch.nn.Module, inputs: torch.Tensor, allowed_patches: torch.Tensor
) -> torch.Tensor:
    """(B, classes) logits of a timm ViT whose last block's CLS row reads only the prefix
    tokens and ``allowed_patches`` (B, P) bool."""
    bias = cls_row_bias(allowed_patches, model.num_prefix_tokens)

    def with_bias(_block, args, kwargs):
        return args, {**kwargs, "attn_mask": bias}

    handle = model.blocks[-1].register_forward_pre_hook(with_bias, with_kwargs=True)
    try:
        return model(inputs)
    finally:
        handle.remove()


def reading_accuracies(
    model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, masks: np.ndarray
) -> dict[str, float]:
    """Accuracy per entry of ``READINGS`` on (N, H, W, 3) images with labels (N,) and masks
    (N, H, W)."""
    inputs = to_model_input(images, model)
    fractions = mask_fractions(masks, tuple(model.patch_embed.grid_size))
    return {
        reading: float(
            (
                logits_with_last_layer_reading(model, inputs, allowed(fractions)).argmax(dim=1)
                == torch.from_numpy(labels)
            )
            .float()
            .mean()
        )
        for reading, allowed in READINGS.items()
    }


def reading_table(
    model_names: tuple[str, ...],
    split: SplitImages,
    load_model: Callable[[str], torch.nn.Module],
) -> str:
    """Markdown table: accuracy on ``split`` per model and per reading of the last layer.

    ``load_model`` is the caller's (``evaluate_embedded.load_model``), so that weights it was
    told to score (``--faithful-weights``) are the ones read here too.
    """
    lines = [
        "| model | " + " | ".join(f"reads {reading}" for reading in READINGS) + " |",
        "|---|" + "---|" * len(READINGS),
    ]
    for model_name in model_names:
        model = load_model(model_name).eval()
        accuracies = reading_accuracies(model, split.images, split.labels, split.masks)
        lines.append(
            f"| `{model_name}` | " + " | ".join(f"{a:.3f}" for a in accuracies.values()) + " |"
        )
    return "\n".join(lines)
