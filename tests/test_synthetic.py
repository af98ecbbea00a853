"""Tests of the synthetic shapes generator behind the embedded models."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pytest_vitattn.synthetic import (
    GRAYSCALE_SHARE,
    MARKER_COLOURS,
    MAX_AREA_SHARE,
    MIN_AREA_SHARE,
    MIN_CONTRAST,
    OTHER_SHAPES,
    SHAPE_CLASSES,
    SPLITS,
    VARIED_AREA_SHARES,
    luminance,
    make_batch,
    make_object_free_image,
    make_other_shape_image,
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


@pytest.mark.parametrize(
    ("style", "low", "high"),
    [("bright", MIN_AREA_SHARE, MAX_AREA_SHARE), ("varied", *VARIED_AREA_SHARES)],
)
def test_objects_cover_a_small_part_of_the_image(style, low, high):
    areas = np.array([make_sample(i, split="test", style=style).mask.mean() for i in range(300)])
    # Rasterisation moves the drawn area a little off the requested share.
    assert areas.min() >= 0.8 * low
    assert areas.max() <= 1.2 * high
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
        {"style": "dark"},
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


# sha256 over 0.1's images, masks, labels and shapes (20 indices of every split, plain,
# marked, and marked with shape_agreement=0.5), computed with the 0.1 generator's code.
BRIGHT_STYLE_DIGEST = "8b1cc01685e1e0b68bcc7d2bac1384349f69118f29145d4dbd47b4ef236c760a"


def test_bright_style_regenerates_the_0_1_images_bit_for_bit():
    digest = hashlib.sha256()
    for split in ("train", "test", "example", "val"):
        for index in range(20):
            for kwargs in ({}, {"shortcut": True}, {"shortcut": True, "shape_agreement": 0.5}):
                sample = make_sample(index, split=split, style="bright", **kwargs)
                digest.update(np.asarray(sample.image).tobytes())
                digest.update(sample.mask.tobytes())
                digest.update(bytes([sample.label, sample.shape]))
    assert digest.hexdigest() == BRIGHT_STYLE_DIGEST


def test_the_styles_draw_different_images():
    for index in range(20):
        bright = np.asarray(make_sample(index, style="bright").image)
        varied = np.asarray(make_sample(index, style="varied").image)
        assert not np.array_equal(bright, varied)


def _object_and_brightest_patch(sample) -> tuple[float, float]:
    image = np.asarray(sample.image)
    lum = luminance(image).reshape(8, 8, 8, 8).mean(axis=(1, 3))
    touched = sample.mask.reshape(8, 8, 8, 8).any(axis=(1, 3))
    return float(luminance(image[sample.mask]).mean()), float(lum[~touched].max())


def test_bright_style_objects_outshine_every_background_patch():
    """The cue of 0.1, measured: what the varied style removes."""
    samples = [make_sample(i, split="test", style="bright") for i in range(200)]
    brighter = np.mean([obj > patch for obj, patch in map(_object_and_brightest_patch, samples)])
    assert brighter >= 0.7  # by luminance; by HSV value the object is always brighter


def test_varied_objects_are_often_darker_than_the_brightest_background(test_samples):
    pairs = [_object_and_brightest_patch(s) for s in test_samples]
    darker = np.mean([obj <= patch - 40 for obj, patch in pairs])
    brightest = np.mean([obj > patch for obj, patch in pairs])
    assert darker >= 0.3, darker
    assert brightest <= 0.4, brightest


def test_varied_objects_keep_a_visible_contrast(test_samples):
    """The colour floor, measured on the pixels: object mean vs the ring just around it."""
    from pytest_vitattn.synthetic import _surround

    for sample in test_samples[:100]:
        assert sample.contrast >= MIN_CONTRAST
        image = np.asarray(sample.image, dtype=np.float32)
        measured = np.linalg.norm(
            image[sample.mask].mean(axis=0) - image[_surround(sample.mask)].mean(axis=0)
        )
        # Sensor noise (sigma 6) and clipping move the means a little.
        assert measured >= MIN_CONTRAST - 12, (measured, sample.contrast)
    modes = {sample.contrast_mode for sample in test_samples}
    assert modes == {"any", "darker", "equal-luminance", "low"}


def test_varied_shapes_turn_and_some_images_are_gray(test_samples):
    angles = [s.angle for s in test_samples if SHAPE_CLASSES[s.shape] in ("square", "triangle")]
    assert np.mean([15 <= a % 90 <= 75 for a in angles]) >= 0.5
    gray = [s for s in test_samples if s.grayscale]
    assert abs(len(gray) / len(test_samples) - GRAYSCALE_SHARE) <= 0.07
    for sample in gray:
        pixels = np.asarray(sample.image)
        assert np.array_equal(pixels[..., 0], pixels[..., 1])
        assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_varied_images_have_bright_distractors(test_samples):
    with_stroke = [s for s in test_samples if s.distractor_luminance is not None]
    assert 0.35 <= len(with_stroke) / len(test_samples) <= 0.65
    assert min(s.distractor_luminance for s in with_stroke) >= 0.85 * 255 * 0.5


def test_object_free_images_are_reproducible_and_repeat_no_sample():
    first = np.asarray(make_object_free_image(5, split="train"))
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, np.asarray(make_object_free_image(5, split="train")))
    assert not np.array_equal(first, np.asarray(make_object_free_image(5, split="val")))
    samples = {np.asarray(make_sample(i, split="train").image).tobytes() for i in range(50)}
    free = {np.asarray(make_object_free_image(i, split="train")).tobytes() for i in range(50)}
    assert len(free) == 50 and not free & samples


def test_object_free_images_share_the_varied_styles_gray_share():
    gray = [
        np.ptp(np.asarray(make_object_free_image(i)).astype(np.int16), axis=-1).max() == 0
        for i in range(400)
    ]
    assert abs(np.mean(gray) - GRAYSCALE_SHARE) < 0.05


@pytest.mark.parametrize("kwargs", [{"split": "validation"}, {"index": -1}])
def test_object_free_images_refuse_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_object_free_image(**{"index": 0, **kwargs})


def test_other_shape_images_draw_every_other_shape_and_repeat_nothing():
    drawn = [make_other_shape_image(i) for i in range(120)]
    assert {shape for _, shape in drawn} == set(OTHER_SHAPES)
    assert not set(OTHER_SHAPES) & set(SHAPE_CLASSES)
    first, again = make_other_shape_image(3), make_other_shape_image(3)
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0])) and first[1] == again[1]
    pixels = {np.asarray(image).tobytes() for image, _ in drawn}
    free = {np.asarray(make_object_free_image(i)).tobytes() for i in range(120)}
    assert len(pixels) == 120 and not pixels & free


def test_other_shapes_cover_about_their_area_coefficient():
    """Each shape's drawn area is its coefficient x R**2 (within 25%), so the areas drawn
    follow the samples' log-uniform range."""
    from pytest_vitattn.synthetic import _draw_other_shape

    radius = 20.0
    for shape, coefficient in OTHER_SHAPES.items():
        image = Image.new("1", (64, 64), 0)
        _draw_other_shape(ImageDraw.Draw(image), shape, 32.0, 32.0, radius, 30.0)
        area = np.asarray(image, dtype=bool).sum()
        assert area == pytest.approx(coefficient * radius**2, rel=0.25), shape


@pytest.mark.parametrize("kwargs", [{"split": "validation"}, {"index": -1}])
def test_other_shape_images_refuse_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make_other_shape_image(**{"index": 0, **kwargs})
