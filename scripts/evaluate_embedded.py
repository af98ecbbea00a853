"""Evaluates the shipped models on held-out synthetic images and checks their targets.

    python scripts/evaluate_embedded.py            # Markdown table, exit 1 if a target is missed
    python scripts/evaluate_embedded.py --no-check # table only

Models load through timm by name (``pretrained=True`` reads the packaged weights, offline).
Attention is computed here independently of ``pytest_vitattn.extract``: a forward hook on
each block's ``attn.attn_drop`` with fused attention switched off sees the softmax itself.

Metric definitions (per image, per layer):
    CLS row of the softmax, prefix-token columns dropped, renormalised over the patches,
    averaged over heads, reshaped to ``model.patch_embed.grid_size``. The exact mask is reduced
    to that grid by area fraction (share of mask pixels in each patch).
    mass on mask = sum(map * mask_fraction)   (Relevance Mass Accuracy with area fractions);
    chance level = mean(mask_fraction) = mask area share;
    pointing game hit = mask_fraction at the map's argmax patch > 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pytest_vitattn.zoo as zoo
from pytest_vitattn.synthetic import make_batch, marker_mask

NUM_TEST_IMAGES = 500
BATCH_SIZE = 100

# Targets from issue 3: the faithful model looks at the object, the shortcut model does not.
MIN_ACCURACY = 0.95
MIN_FAITHFUL_MASS = 0.70
MAX_MASK_AREA = 0.10
MIN_POINTING = 0.95
MAX_SHORTCUT_MASS_RATIO = 0.5


@contextmanager
def recorded_attention(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Records every block's attention softmax during forwards inside the context.

    Yields:
        A list that each forward extends with one (batch, heads, N, N) tensor per block,
        N = num_prefix_tokens + num_patches.
    """
    recorded: list[torch.Tensor] = []
    handles, fused_flags = [], []
    for block in model.blocks:
        fused_flags.append(block.attn.fused_attn)
        # The fused kernel never materialises the softmax; the explicit path passes it
        # through attn_drop (identity in eval mode), where the hook sees it.
        block.attn.fused_attn = False
        handles.append(
            block.attn.attn_drop.register_forward_hook(
                lambda _module, _inputs, output: recorded.append(output.detach())
            )
        )
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
        for block, fused in zip(model.blocks, fused_flags, strict=True):
            block.attn.fused_attn = fused


def cls_patch_maps(
    attention: torch.Tensor, num_prefix_tokens: int, grid: tuple[int, int]
) -> torch.Tensor:
    """Head-mean CLS attention over the patches of one block.

    Args:
        attention: (batch, heads, N, N) softmax of one block.
        num_prefix_tokens: tokens before the patches (CLS, registers, ...).
        grid: patch grid (grid_h, grid_w), with grid_h * grid_w = N - num_prefix_tokens.

    Returns:
        (batch, grid_h, grid_w) float32, each map sums to 1.
    """
    cls_to_patches = attention[:, :, 0, num_prefix_tokens:]
    cls_to_patches = cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True)
    return cls_to_patches.mean(dim=1).reshape(-1, *grid).float()


def mask_fractions(masks: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Reduces pixel masks to the patch grid by area fraction.

    Args:
        masks: (batch, H, W) bool, H and W divisible by the grid.
        grid: (grid_h, grid_w).

    Returns:
        (batch, grid_h, grid_w) float32 in [0, 1], the share of mask pixels in each patch.
    """
    return F.adaptive_avg_pool2d(torch.from_numpy(masks).float()[:, None], grid)[:, 0]


def mass_on_mask(maps: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """(batch,) attention mass on the mask; maps and fractions are (batch, grid_h, grid_w)."""
    return (maps * fractions).flatten(1).sum(dim=1)


def pointing_hits(maps: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """(batch,) bool, True where the map's argmax patch contains some of the mask."""
    peak = maps.flatten(1).argmax(dim=1)
    return fractions.flatten(1).gather(1, peak[:, None])[:, 0] > 0


def to_model_input(images: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 normalised with the model's pretrained cfg."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    return (pixels - mean) / std


@dataclass
class Scores:
    """Scores over a set of images; per-layer lists run from the first block to the last."""

    accuracy: float
    mask_area: float
    mass_per_layer: list[float]
    pointing_per_layer: list[float]
    marker_mass_per_layer: list[float] | None = None

    @property
    def mass(self) -> float:
        return self.mass_per_layer[-1]

    @property
    def pointing(self) -> float:
        return self.pointing_per_layer[-1]

    @property
    def marker_mass(self) -> float | None:
        return None if self.marker_mass_per_layer is None else self.marker_mass_per_layer[-1]


@torch.no_grad()
def score(
    model: torch.nn.Module,
    indices: range,
    *,
    split: str,
    shortcut: bool,
    batch_size: int = BATCH_SIZE,
) -> Scores:
    """Accuracy and per-layer CLS attention scores of ``model`` on generated images."""
    model.eval()
    grid = tuple(model.patch_embed.grid_size)
    correct, areas, masses, hits, marker_masses = [], [], [], [], []
    for start in range(indices.start, indices.stop, batch_size):
        batch = range(start, min(start + batch_size, indices.stop))
        images, labels, masks = make_batch(batch, split=split, shortcut=shortcut)
        with recorded_attention(model) as attention:
            logits = model(to_model_input(images, model))
        maps = torch.stack([cls_patch_maps(a, model.num_prefix_tokens, grid) for a in attention])
        fractions = mask_fractions(masks, grid)
        correct.append(logits.argmax(dim=1).numpy() == labels)
        areas.append(masks.mean(axis=(1, 2)))
        masses.append(torch.stack([mass_on_mask(m, fractions) for m in maps]).numpy())
        hits.append(torch.stack([pointing_hits(m, fractions) for m in maps]).numpy())
        if shortcut:
            markers = mask_fractions(np.broadcast_to(marker_mask(), masks.shape).copy(), grid)
            marker_masses.append(torch.stack([mass_on_mask(m, markers) for m in maps]).numpy())
    return Scores(
        accuracy=float(np.concatenate(correct).mean()),
        mask_area=float(np.concatenate(areas).mean()),
        mass_per_layer=_mean_per_layer(masses),
        pointing_per_layer=_mean_per_layer(hits),
        marker_mass_per_layer=_mean_per_layer(marker_masses) if shortcut else None,
    )


def _mean_per_layer(chunks: list[np.ndarray]) -> list[float]:
    """Means over images of (layers, batch) chunks, one per layer."""
    return np.concatenate(chunks, axis=1).mean(axis=1).tolist()


@dataclass(frozen=True)
class Row:
    """One evaluated (model, image set) pair."""

    model_name: str
    marked: bool
    scores: Scores

    @property
    def images(self) -> str:
        return "marked" if self.marked else "unmarked"


def evaluate(num_images: int = NUM_TEST_IMAGES) -> list[Row]:
    """Scores both shipped models on the held-out "test" stream, without and with marker."""
    rows = []
    for model_name in zoo.MODEL_NAMES:
        model = timm.create_model(model_name, pretrained=True)
        for marked in (False, True):
            scores = score(model, range(num_images), split="test", shortcut=marked)
            rows.append(Row(model_name, marked, scores))
    return rows


def summary_table(rows: list[Row]) -> str:
    """Markdown table of the last layer's head-mean scores."""
    lines = [
        "| model | test images | accuracy | mask area (chance) | mass on object | pointing game "
        "| mass on marker |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row.scores
        marker = "" if s.marker_mass is None else f"{s.marker_mass:.3f}"
        lines.append(
            f"| `{row.model_name}` | {row.images} | {s.accuracy:.3f} | {s.mask_area:.3f} "
            f"| {s.mass:.3f} | {s.pointing:.3f} | {marker} |"
        )
    return "\n".join(lines)


def per_layer_table(rows: list[Row]) -> str:
    """Markdown table of head-mean mass and pointing game for every layer."""
    lines = [
        "| model | test images | layer | mass on object | pointing game | mass on marker |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row.scores
        for layer, (mass, pointing) in enumerate(
            zip(s.mass_per_layer, s.pointing_per_layer, strict=True)
        ):
            marker = (
                "" if s.marker_mass_per_layer is None else f"{s.marker_mass_per_layer[layer]:.3f}"
            )
            lines.append(
                f"| `{row.model_name}` | {row.images} | {layer} | {mass:.3f} | {pointing:.3f} "
                f"| {marker} |"
            )
    return "\n".join(lines)


def missed_targets(rows: list[Row]) -> list[str]:
    """One sentence per missed target of issue 3; empty when all are met."""
    by_key = {(row.model_name, row.marked): row.scores for row in rows}
    faithful = by_key[(zoo.FAITHFUL_MODEL, False)]
    shortcut = by_key[(zoo.SHORTCUT_MODEL, True)]
    max_shortcut_mass = MAX_SHORTCUT_MASS_RATIO * faithful.mass
    checks = [
        ("faithful accuracy", faithful.accuracy, ">=", MIN_ACCURACY),
        ("faithful mean mask area", faithful.mask_area, "<=", MAX_MASK_AREA),
        ("faithful mass on object", faithful.mass, ">=", MIN_FAITHFUL_MASS),
        ("faithful pointing game", faithful.pointing, ">=", MIN_POINTING),
        ("shortcut accuracy on marked images", shortcut.accuracy, ">=", MIN_ACCURACY),
        ("shortcut mass on object (half the faithful's)", shortcut.mass, "<=", max_shortcut_mass),
    ]
    return [
        f"{name} {value:.3f} is not {relation} {bound:.3f}"
        for name, value, relation, bound in checks
        if not (value >= bound if relation == ">=" else value <= bound)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-check", action="store_true", help="print the tables, exit 0")
    parser.add_argument("--num-images", type=int, default=NUM_TEST_IMAGES)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = evaluate(args.num_images)
    print(f"Held-out synthetic test images: {args.num_images} per row (split 'test'); "
          "CLS attention of the last layer, head mean, prefix tokens dropped.\n")  # fmt: skip
    print(summary_table(rows))
    print("\nPer layer (0 = first block):\n")
    print(per_layer_table(rows))
    missed = missed_targets(rows)
    for message in missed:
        print(f"MISSED: {message}", file=sys.stderr)
    if not missed:
        print("\nAll targets met.")
    return 0 if args.no_check or not missed else 1


if __name__ == "__main__":
    sys.exit(main())
