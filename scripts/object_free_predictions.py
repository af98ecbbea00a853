"""What a model answers when the image holds no shape at all.

A classifier trained only on images that hold one of five shapes may learn one class as
"none of the other four": it then needs no evidence for that class, and its CLS attention has
nothing to look for on such objects. Shown object-free images (``make_object_free_image``:
the "varied" backgrounds and strokes, no object), such a model names that class for most of
them, and with confidence. A model that needs evidence for every class finds none here:
its top probability is near the uniform 0.2 (its argmax may still lean to one class; the
README shows both).

    python scripts/evaluate_embedded.py    # prints this table among the others
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from evaluate_embedded import to_model_input

from pytest_vitattn.synthetic import SHAPE_CLASSES, make_object_free_image

SPLIT = "test"


@dataclass(frozen=True)
class ObjectFreeAnswers:
    """A model's answers on object-free images.

    Attributes:
        shares: (classes,) share of the images whose argmax is each class; sums to 1.
        top_probability: mean over images of the largest softmax probability.
    """

    shares: np.ndarray
    top_probability: float


def object_free_images(num_images: int) -> np.ndarray:
    """(num_images, H, W, 3) uint8: the first object-free images of the "test" stream."""
    return np.stack([np.asarray(make_object_free_image(i, split=SPLIT)) for i in range(num_images)])


@torch.no_grad()
def answers(model: torch.nn.Module, images: np.ndarray) -> ObjectFreeAnswers:
    """The model's answers on ``images`` (N, H, W, 3) uint8 (one forward pass, eval mode)."""
    model.eval()
    probabilities = model(to_model_input(images, model)).softmax(dim=1)  # (N, classes)
    predicted = probabilities.argmax(dim=1).numpy()
    shares = np.bincount(predicted, minlength=probabilities.shape[1]) / len(images)
    return ObjectFreeAnswers(shares, float(probabilities.max(dim=1).values.mean()))


def object_free_table(
    model_names: tuple[str, ...],
    num_images: int,
    load_model: Callable[[str], torch.nn.Module],
) -> str:
    """Markdown table: per model, the share of object-free images named each class and the
    mean top probability (uniform: 1 / classes). ``load_model`` is the caller's
    (``evaluate_embedded.load_model``), so that the weights it scores are the ones used."""
    header = " | ".join(SHAPE_CLASSES)
    lines = [
        f"| model | {header} | mean top probability (uniform {1 / len(SHAPE_CLASSES):.2f}) |",
        "|---|" + "---|" * (len(SHAPE_CLASSES) + 1),
    ]
    images = object_free_images(num_images)
    for model_name in model_names:
        result = answers(load_model(model_name), images)
        shares = " | ".join(f"{share:.2f}" for share in result.shares)
        lines.append(f"| `{model_name}` | {shares} | {result.top_probability:.2f} |")
    return "\n".join(lines)
