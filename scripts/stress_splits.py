"""The stress splits of ``evaluate_embedded.py``: held-out image sets that each remove one
easy cue, selected from the "test" stream of ``pytest_vitattn.synthetic`` ("varied" style).

Every split takes the first ``n`` test images (index order) that meet its condition, so the
sets are fixed and reproducible. Splits of ordinary object sizes keep objects covering at
least ``SMALL_AREA`` of the image; "small objects" keeps only those below it, where partly
covered patches cap the mass a map can put on the object (the script prints that cap).

Conditions are measured on the pixels where possible (luminance, brightest patch) rather
than taken from the generator's own bookkeeping.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pytest_vitattn.synthetic import LOW_CONTRAST, SHAPE_CLASSES, Sample, luminance, make_sample

SMALL_AREA = 0.03
# "Darker": the object's mean luminance is at least this far (0-255) below the brightest
# 8 x 8 patch that holds no object pixel; "bright distractor": the stroke is at least this
# much brighter than the object.
DARKER_MARGIN = 40.0
# "Rotated": squares, crosses and triangles turned at least this far (degrees) from every
# upright pose (their symmetry repeats every 90, 90 and 120 degrees).
MIN_TURN = 15.0
_SYMMETRY = {"square": 90.0, "cross": 90.0, "triangle": 120.0}
_PATCH = 8
_MAX_SCANNED = 200_000


@dataclass(frozen=True)
class StressSplit:
    """A named image set: which test samples it keeps and how it changes their pixels."""

    name: str
    keep: Callable[[Sample, np.ndarray], bool]
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    small: bool = False


def object_luminance(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean luminance (0-255) of the object's pixels; image (H, W, 3) uint8, mask (H, W)."""
    return float(luminance(image[mask]).mean())


def brightest_background_patch(image: np.ndarray, mask: np.ndarray) -> float:
    """Highest mean luminance of an 8 x 8 patch without object pixels (0-255)."""
    height, width = mask.shape
    lum = luminance(image).reshape(height // _PATCH, _PATCH, width // _PATCH, _PATCH)
    touched = mask.reshape(height // _PATCH, _PATCH, width // _PATCH, _PATCH).any(axis=(1, 3))
    return float(lum.mean(axis=(1, 3))[~touched].max())


def _ordinary(sample: Sample) -> bool:
    return float(sample.mask.mean()) >= SMALL_AREA


def _darker(sample: Sample, image: np.ndarray) -> bool:
    return object_luminance(image, sample.mask) <= (
        brightest_background_patch(image, sample.mask) - DARKER_MARGIN
    )


def _turned(sample: Sample) -> bool:
    period = _SYMMETRY.get(SHAPE_CLASSES[sample.shape])
    if period is None:
        return False
    offset = sample.angle % period
    return min(offset, period - offset) >= MIN_TURN


def _bright_distractor(sample: Sample, image: np.ndarray) -> bool:
    return sample.distractor_luminance is not None and sample.distractor_luminance >= (
        object_luminance(image, sample.mask) + DARKER_MARGIN
    )


def _invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


SPLITS: tuple[StressSplit, ...] = (
    StressSplit("in-distribution", lambda s, _i: _ordinary(s)),
    StressSplit(
        f"object > {DARKER_MARGIN:.0f} darker than the brightest background patch",
        lambda s, i: _ordinary(s) and _darker(s, i),
    ),
    StressSplit(
        f"low contrast (colour distance < {LOW_CONTRAST:.0f})",
        lambda s, _i: _ordinary(s) and s.contrast is not None and s.contrast < LOW_CONTRAST,
    ),
    StressSplit("grayscale", lambda s, _i: _ordinary(s) and s.grayscale),
    StressSplit("inverted", lambda s, _i: _ordinary(s), transform=_invert),
    StressSplit(
        f"rotated >= {MIN_TURN:.0f} deg (square, cross, triangle)",
        lambda s, _i: _ordinary(s) and _turned(s),
    ),
    StressSplit(
        f"bright distractor (stroke > {DARKER_MARGIN:.0f} brighter than the object)",
        lambda s, i: _ordinary(s) and _bright_distractor(s, i),
    ),
    StressSplit(
        f"small objects (area < {SMALL_AREA})",
        lambda s, _i: not _ordinary(s),
        small=True,
    ),
)


@dataclass(frozen=True)
class SplitImages:
    """A split's images: (N, H, W, 3) uint8, labels (N,) int64, masks (N, H, W) bool."""

    split: StressSplit
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    indices: np.ndarray


def build_splits(
    num_images: int, splits: tuple[StressSplit, ...] = SPLITS, stream: str = "test"
) -> list[SplitImages]:
    """The first ``num_images`` samples of each split, in index order, from the generator's
    ``stream`` ("test"; "val" to compare training runs without looking at the test images)."""
    chosen: list[list[tuple[int, Sample, np.ndarray]]] = [[] for _ in splits]
    for index in range(_MAX_SCANNED):
        if all(len(found) >= num_images for found in chosen):
            break
        sample = make_sample(index, split=stream)
        image = np.asarray(sample.image)
        for split, found in zip(splits, chosen, strict=True):
            if len(found) < num_images and split.keep(sample, image):
                found.append((index, sample, image))
    built = []
    for split, found in zip(splits, chosen, strict=True):
        if len(found) < num_images:
            raise RuntimeError(f"only {len(found)} {stream} images fit split {split.name!r}")
        images = np.stack([image for _, _, image in found])
        if split.transform is not None:
            images = np.stack([split.transform(image) for image in images])
        built.append(
            SplitImages(
                split,
                images,
                np.array([sample.label for _, sample, _ in found], dtype=np.int64),
                np.stack([sample.mask for _, sample, _ in found]),
                np.array([index for index, _, _ in found]),
            )
        )
    return built


# Accuracy of a guess: one class in five.
CHANCE_ACCURACY = 1.0 / len(SHAPE_CLASSES)
