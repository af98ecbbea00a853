"""Where each head of the last layer looks, shape by shape.

The head-mean map hides which heads do the looking. In the faithful models trained here a
head often reads the object for some classes and hardly at all for others: for those its
map spreads over the background, or it keeps most of the CLS token's attention on the CLS
token itself (the prefix) and what is left for the patches, scaled to sum to 1 as every map
in this project is, lies off the object. Such a head is off duty for that class: the CLS
token already carries the class when it enters the last block (``last_layer_reading.py``),
and the query that decides where the head looks is computed from that token. This table
shows it per head and shape: mass on the object of each head's own map, and the share of
the head's CLS attention that stays on prefix tokens.

    python scripts/evaluate_embedded.py    # prints this table among the others
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from evaluate_embedded import mask_fractions, recorded_attention, to_model_input

from pytest_vitattn.synthetic import SHAPE_CLASSES


@dataclass(frozen=True)
class HeadScores:
    """Per head and shape class of one layer, means over the images of the class.

    Attributes:
        mass: (heads, classes) mass on the object of each head's CLS map over the patches,
            scaled to sum to 1 (the head-mean map's mass is the mean over heads).
        prefix_share: (heads, classes) share of each head's CLS attention on prefix tokens
            (the CLS token itself, registers), before that scaling.
    """

    mass: np.ndarray
    prefix_share: np.ndarray


def head_scores(
    attention: torch.Tensor, fractions: torch.Tensor, labels: np.ndarray, num_prefix_tokens: int
) -> HeadScores:
    """Per-head scores of one block's attention.

    Args:
        attention: (N, heads, T, T) softmax of one block, T = num_prefix_tokens + patches.
        fractions: (N, patches) the object's share of each patch.
        labels: (N,) class index of each image; every class must occur.
        num_prefix_tokens: tokens before the patches.
    """
    cls_row = attention[:, :, 0].double()  # (N, heads, T)
    prefix_share = cls_row[..., :num_prefix_tokens].sum(dim=-1)  # (N, heads)
    patches = cls_row[..., num_prefix_tokens:]
    patches = patches / patches.sum(dim=-1, keepdim=True)
    mass = (patches * fractions[:, None].double()).sum(dim=-1)  # (N, heads)
    per_class = [labels == label for label in range(len(SHAPE_CLASSES))]
    missing = [SHAPE_CLASSES[c] for c, keep in enumerate(per_class) if not keep.any()]
    if missing:
        raise ValueError(f"no image of the class(es) {missing}: every class must occur")

    def class_means(values: torch.Tensor) -> np.ndarray:  # (N, heads) -> (heads, classes)
        return np.stack([values[keep].mean(dim=0).numpy() for keep in per_class], axis=1)

    return HeadScores(mass=class_means(mass), prefix_share=class_means(prefix_share))


@torch.no_grad()
def last_layer_head_scores(
    model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, masks: np.ndarray
) -> HeadScores:
    """``head_scores`` of the model's last block on ``images`` (N, H, W, 3) uint8 with
    ``masks`` (N, H, W) bool and ``labels`` (N,)."""
    model.eval()
    with recorded_attention(model) as attention:
        model(to_model_input(images, model))
    fractions = mask_fractions(masks, tuple(model.patch_embed.grid_size)).flatten(1)
    return head_scores(attention[-1], fractions, labels, model.num_prefix_tokens)


def heads_by_shape_table(
    model_names: tuple[str, ...],
    images: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    load_model: Callable[[str], torch.nn.Module],
) -> str:
    """Markdown table: per model and last-layer head, each shape's mass on the object and,
    in brackets, the share of CLS attention kept on prefix tokens. ``load_model`` is the
    caller's (``evaluate_embedded.load_model``), so that the weights it scores are the ones
    used."""
    header = " | ".join(SHAPE_CLASSES)
    lines = [f"| model | head | {header} |", "|---|---|" + "---|" * len(SHAPE_CLASSES)]
    for model_name in model_names:
        scores = last_layer_head_scores(load_model(model_name), images, labels, masks)
        for head, (masses, shares) in enumerate(zip(scores.mass, scores.prefix_share, strict=True)):
            cells = " | ".join(f"{m:.2f} ({s:.2f})" for m, s in zip(masses, shares, strict=True))
            lines.append(f"| `{model_name}` | {head} | {cells} |")
    return "\n".join(lines)
