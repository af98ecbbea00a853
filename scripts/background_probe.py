"""How much the tokens that the last block reads know of the class, by distance from the object.

    python scripts/background_probe.py                      # the shipped faithful model
    python scripts/background_probe.py --faithful-weights FILE

A linear probe (LayerNorm, then linear to the five classes) is fitted on the patch tokens
entering the last block of ``vitattn_tiny_shapes``, from "val" images, and scored on
held-out "test" images (the in-distribution stress split), separately for the patches the
object touches, the ring of patches around those, and the patches more than one cell from
the object, and the same for the tokens entering every earlier block (chance 0.20). If the
far patches tell the class, the last layer can classify without looking at the object, and
where its CLS attention goes is free to drift (README, "What the tokens it reads know").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).parent)]
from evaluate_embedded import (  # noqa: E402
    load_model,
    make_batch,
    mask_fractions,
    to_model_input,
    use_faithful_options,
)
from last_layer_reading import READINGS  # noqa: E402
from stress_splits import build_splits  # noqa: E402

import pytest_vitattn.zoo as zoo  # noqa: E402
from pytest_vitattn.synthetic import SHAPE_CLASSES  # noqa: E402

# Patch groups by distance from the object, as ``last_layer_reading`` defines them:
# (B, grid_h, grid_w) fractions -> (B, P) bool.
_TOUCHED = READINGS["the patches the object touches"]
_FAR = READINGS["only patches > 1 cell from the object"]
GROUPS = {
    "patches the object touches": _TOUCHED,
    "patches next to those": lambda fractions: ~_TOUCHED(fractions) & ~_FAR(fractions),
    "patches > 1 cell from the object": _FAR,
}


def tokens_entering_blocks(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """(num_blocks, B, P, D): the patch tokens each block reads (prefix tokens dropped)."""
    entering: list[list[torch.Tensor]] = [[] for _ in model.blocks]
    hooks = [
        block.register_forward_pre_hook(lambda _b, inputs, k=k: entering[k].append(inputs[0]))
        for k, block in enumerate(model.blocks)
    ]
    try:
        with torch.no_grad():
            for start in range(0, len(images), 100):
                model.forward_features(to_model_input(images[start : start + 100], model))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([torch.cat(chunks) for chunks in entering])[:, :, model.num_prefix_tokens :]


def fit_probe(tokens: torch.Tensor, labels: torch.Tensor, steps: int = 300) -> torch.nn.Module:
    """A LayerNorm + linear probe to the shape classes, fitted full-batch with Adam.

    Args:
        tokens: (T, D) float.
        labels: (T,) class indices.
    """
    torch.manual_seed(0)
    probe = torch.nn.Sequential(
        torch.nn.LayerNorm(tokens.shape[1]), torch.nn.Linear(tokens.shape[1], len(SHAPE_CLASSES))
    )
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(probe(tokens), labels).backward()
        optimizer.step()
    return probe.eval()


def probe_table(num_fit: int, num_test: int) -> str:
    """Markdown: per patch group and block, the probe's accuracy on held-out tokens."""
    model = load_model(zoo.FAITHFUL_MODEL).eval()
    grid = tuple(model.patch_embed.grid_size)
    fit_images, fit_labels, fit_masks = make_batch(range(num_fit), split="val", shortcut=False)
    test = build_splits(num_test, stream="test")[0]
    fit_tokens = tokens_entering_blocks(model, fit_images)
    test_tokens = tokens_entering_blocks(model, test.images)
    fit_fractions = mask_fractions(fit_masks, grid)
    test_fractions = mask_fractions(test.masks, grid)
    fit_labels = torch.as_tensor(fit_labels)
    test_labels = torch.as_tensor(test.labels)
    last = len(model.blocks) - 1
    blocks = [f"block {k}" + (" (last)" if k == last else "") for k in range(last + 1)]
    lines = [
        "| patches | fitted on (val tokens) | scored on (test tokens) | "
        + " | ".join(blocks)
        + " |",
        "|---|---|---|" + "---|" * len(blocks),
    ]
    for name, group in GROUPS.items():
        fit_keep, test_keep = group(fit_fractions), group(test_fractions)
        fit_targets = fit_labels[:, None].expand_as(fit_keep)[fit_keep]
        truth = test_labels[:, None].expand_as(test_keep)[test_keep]
        accuracies = []
        for k in range(last + 1):
            probe = fit_probe(fit_tokens[k][fit_keep], fit_targets)
            with torch.no_grad():
                predicted = probe(test_tokens[k][test_keep]).argmax(dim=1)
            accuracies.append(f"{float((predicted == truth).float().mean()):.3f}")
        lines.append(
            f"| {name} | {int(fit_keep.sum())} | {int(test_keep.sum())} | "
            + " | ".join(accuracies)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-fit", type=int, default=400, help="val images to fit on")
    parser.add_argument("--num-test", type=int, default=500, help="test images to score")
    parser.add_argument("--faithful-weights", type=Path, default=None)
    args = parser.parse_args(argv)
    use_faithful_options(parser, args.faithful_weights)
    torch.set_num_threads(1)
    print(probe_table(args.num_fit, args.num_test))
    return 0


if __name__ == "__main__":
    sys.exit(main())
