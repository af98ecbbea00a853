"""Tests of the synthetic shapes generator behind the embedded models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pytest_vitattn.synthetic import (
    MARKER_COLOURS,
    MAX_AREA_SHARE,
    MIN_AREA_SHARE,
    SHAPE_CLASSES,
    SPLITS,
    make_batch,
    make_sample,
    marker_mask,
)

NUM_SAMPLES = 300


@pytest.fixture(scope="module")
def test_samples():
    return [make_sample(i, split="test") for i in range(NUM_SAMPLES)]


def test_same_arguments_give_the_same_pixels():
    first, second = make_sample(7, split="test"), make_sample(7, split="test")
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert np.array_equal(first.mask, second.mask)
    assert first.label == second.label


def test_splits_never_share_an_image():
    fingerprints = {
        split: {np.asarray(make_sample(i, split=split).image).tobytes() for i in range(100)}
        for split in SPLITS
    }
    for split, images in fingerprints.items():
        for other, other_images in fingerprints.items():
            if split != other:
                assert not images & other_images, f"{split} and {other} share an image"


def test_sample_types_and_shapes(test_samples):
    sample = test_samples[0]
    assert sample.image.mode == "RGB" and sample.image.size == (64, 64)
    assert sample.mask.shape == (64, 64) and sample.mask.dtype == bool
    assert sample.marker_mask is None
    assert sample.label == sample.shape
    assert 0 <= sample.label < len(SHAPE_CLASSES)


def test_other_sizes_are_honoured():
    sample = make_sample(0, size=96, shortcut=True)
    assert sample.image.size == (96, 96)
    assert sample.mask.shape == sample.marker_mask.shape == (96, 96)


def test_every_class_is_drawn_about_equally_often(test_samples):
    counts = np.bincount([s.label for s in test_samples], minlength=len(SHAPE_CLASSES))
    assert counts.min() >= 0.6 * NUM_SAMPLES / len(SHAPE_CLASSES), counts


def test_objects_cover_a_small_part_of_the_image(test_samples):
    areas = np.array([s.mask.mean() for s in test_samples])
    # Rasterisation moves the drawn area a little off the requested share.
    assert areas.min() >= 0.8 * MIN_AREA_SHARE
    assert areas.max() <= 1.2 * MAX_AREA_SHARE
    assert areas.mean() <= 0.10


def test_mask_covers_only_the_flat_coloured_object(test_samples):
    # The object is one colour plus sensor noise (sigma 6); a mask that strayed onto the
    # textured background or the distractor strokes would spread far wider.
    for sample in test_samples[:50]:
        object_pixels = np.asarray(sample.image, dtype=np.float32)[sample.mask]
        assert object_pixels.std(axis=0).max() < 10.0


def test_ring_has_a_hole():
    ring = next(s for s in (make_sample(i) for i in range(100)) if SHAPE_CLASSES[s.shape] == "ring")
    rows, cols = np.nonzero(ring.mask)
    centre = (round(rows.mean()), round(cols.mean()))
    assert not ring.mask[centre]


def test_marker_is_the_only_difference_between_marked_and_unmarked():
    for index in range(30):
        plain, marked = make_sample(index), make_sample(index, shortcut=True)
        changed = np.any(np.asarray(plain.image) != np.asarray(marked.image), axis=-1)
        assert not np.any(changed & ~marked.marker_mask)
        assert np.array_equal(plain.mask, marked.mask)
        assert not np.any(marked.mask & marked.marker_mask), "object under the marker"
        marker_pixels = np.asarray(marked.image)[marked.marker_mask]
        assert np.all(marker_pixels == MARKER_COLOURS[marked.label])


def test_marker_sits_in_the_top_left_corner():
    mask = marker_mask(64)
    assert mask.sum() == 8 * 8
    assert mask[:8, :8].all()


def test_shape_agreement_decorrelates_shape_from_label():
    samples = [make_sample(i, shortcut=True, shape_agreement=0.5) for i in range(400)]
    agreeing = np.mean([s.shape == s.label for s in samples])
    assert 0.4 <= agreeing <= 0.6
    assert all(
        np.all(np.asarray(s.image)[s.marker_mask] == MARKER_COLOURS[s.label]) for s in samples
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "validation"},
        {"shape_agreement": 0.5},
        {"shortcut": True, "shape_agreement": 1.5},
    ],
)
def test_invalid_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_sample(0, **kwargs)


def test_batch_matches_samples():
    images, labels, masks = make_batch(range(3, 7), split="test")
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (4,) and labels.dtype == np.int64
    assert masks.shape == (4, 64, 64) and masks.dtype == bool
    for row, index in enumerate(range(3, 7)):
        sample = make_sample(index, split="test")
        assert np.array_equal(images[row], np.asarray(sample.image))
        assert labels[row] == sample.label
        assert np.array_equal(masks[row], sample.mask)


def test_importing_the_generator_imports_neither_torch_nor_timm():
    code = (
        "import sys, pytest_vitattn.synthetic; "
        "heavy = {'torch', 'timm'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
