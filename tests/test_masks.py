"""Masks as users store them: every format gives the object, or an error naming the values.

The regression behind these tests: a 0/1 PNG was divided by 255 (mass 0.0027 for 0.696), a
label map with object id 3 gave 3/255 per object pixel (0.0082), and a VOC palette PNG was
read by brightness (0.104). Here each stored form of one square is read back exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_vitattn.errors import MaskError
from pytest_vitattn.images import load_mask
from pytest_vitattn.masks import check_label, coco_mask, soft_mask

SHAPE = (30, 40)


@pytest.fixture
def square() -> np.ndarray:
    """(30, 40) bool: rows 10-19, cols 15-24."""
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10:20, 15:25] = True
    return mask


def save(tmp_path, name: str, image: Image.Image):
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize(
    "stored",
    ["bool", "uint8 0/1", "uint8 0/255", "int64 0/1", "float 0/1", "float 0/255", "uint16 0/65535"],
)
def test_binary_arrays_in_every_common_encoding_give_the_object(square, stored):
    kind, levels = stored.split(" ") if " " in stored else (stored, "")
    top = int(levels.split("/")[1]) if levels else 1
    array = square if kind == "bool" else square.astype(kind) * top
    np.testing.assert_array_equal(load_mask(array), square.astype(np.float32))
    np.testing.assert_array_equal(load_mask(torch.from_numpy(np.asarray(array))), square)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("0/1 8-bit PNG", lambda m: Image.fromarray(m.astype(np.uint8))),
        ("0/255 8-bit PNG", lambda m: Image.fromarray(m.astype(np.uint8) * 255)),
        ("0/1 16-bit PNG", lambda m: Image.fromarray(m.astype(np.uint16))),
        ("0/65535 16-bit PNG", lambda m: Image.fromarray(m.astype(np.uint16) * 65535)),
        ("1-bit PNG", lambda m: Image.fromarray(m)),
        ("grey stored as RGB", lambda m: Image.fromarray(m.astype(np.uint8) * 255).convert("RGB")),
    ],
)
def test_binary_png_files_give_the_object(tmp_path, square, name, make):
    path = save(tmp_path, "mask.png", make(square))
    np.testing.assert_array_equal(load_mask(path), square.astype(np.float32))


def test_a_01_png_is_not_divided_by_255(tmp_path, square):
    """The issue's 0.0027-for-0.696: a 0/1 PNG read as brightness / 255."""
    path = save(tmp_path, "mask.png", Image.fromarray(square.astype(np.uint8)))
    assert load_mask(path).max() == 1.0
    assert load_mask(path).sum() == square.sum() == 100


def test_float_fractions_are_coverage():
    soft = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(load_mask(soft), soft)


def test_a_label_map_without_label_is_an_error_naming_its_values(square):
    labels = square.astype(np.uint8) * 3
    with pytest.raises(MaskError, match=r"holds 2 different values \(0, 3\).*pass label=<id>"):
        load_mask(labels)


def test_a_label_map_with_label_gives_that_object(tmp_path, square):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[square] = 3
    labels[0:5, 0:5] = 7
    labels[25:30, 35:40] = 255  # VOC's "void" border value
    np.testing.assert_array_equal(load_mask(labels, label=3), square)
    both = load_mask(labels, label=[3, 7])
    assert both.sum() == 100 + 25
    path = save(tmp_path, "labels.png", Image.fromarray(labels))
    np.testing.assert_array_equal(load_mask(path, label=3), square)
    sixteen = save(tmp_path, "labels16.png", Image.fromarray(labels.astype(np.uint16) * 100))
    np.testing.assert_array_equal(load_mask(sixteen, label=300), square)


def test_a_label_missing_from_the_mask_names_the_values_found(square):
    labels = square.astype(np.uint8) * 3
    with pytest.raises(MaskError, match=r"label=5: .* no pixel with id 5; values found: 0, 3"):
        load_mask(labels, label=5)
    with pytest.raises(MaskError, match=r"label=\[3, 9\]: .* no pixel with id 9"):
        load_mask(labels, label=[3, 9])


def voc_palette_png(tmp_path, square) -> tuple:
    """A VOC-style palette PNG: background 0, the object class 15 (person, pink), void 255."""
    indices = np.zeros(SHAPE, dtype=np.uint8)
    indices[square] = 15
    indices[9, 14:26] = 255
    image = Image.fromarray(indices, mode="P")
    palette = [0, 0, 0] * 256
    palette[15 * 3 : 15 * 3 + 3] = [192, 128, 128]
    palette[255 * 3 : 255 * 3 + 3] = [224, 224, 192]
    image.putpalette(palette)
    return save(tmp_path, "2007_000032.png", image), indices


def test_a_palette_png_is_read_by_index_not_by_colour(tmp_path, square):
    path, _ = voc_palette_png(tmp_path, square)
    with Image.open(path) as opened:
        assert opened.mode == "P"
    np.testing.assert_array_equal(load_mask(path, label=15), square)
    with pytest.raises(
        MaskError,
        match=r"palette mask file 2007_000032.png \(read by index\) holds 3 different values \(0, 15, 255\)",
    ):
        load_mask(path)


def test_soft_masks_with_many_grey_levels_need_soft_mask(tmp_path):
    ramp = np.tile(np.arange(0, 256, 5, dtype=np.uint8), (4, 1))
    path = save(tmp_path, "soft.png", Image.fromarray(ramp))
    with pytest.raises(MaskError, match=r"52 different values .*soft_mask\(source\)"):
        load_mask(path)
    np.testing.assert_allclose(soft_mask(path), ramp / 255, atol=1e-7)
    deep = save(tmp_path, "soft16.png", Image.fromarray(ramp.astype(np.uint16) * 257))
    np.testing.assert_allclose(soft_mask(deep), ramp / 255, atol=1e-7)


def test_colour_masks_are_refused_with_their_colours(tmp_path, square):
    rgb = np.zeros((*SHAPE, 3), dtype=np.uint8)
    rgb[square] = (128, 0, 0)
    path = save(tmp_path, "colour.png", Image.fromarray(rgb))
    with pytest.raises(MaskError, match=r"colour image \(2 colours: \(0, 0, 0\), \(128, 0, 0\)\)"):
        load_mask(path)


def test_transparent_masks_are_refused(square):
    rgba = Image.fromarray(square.astype(np.uint8) * 255).convert("LA")
    rgba.putalpha(Image.fromarray(square.astype(np.uint8) * 255))
    with pytest.raises(MaskError, match="has transparent pixels"):
        load_mask(rgba)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([[0.0, 1.5], [2.5, 0.0]]), r"fractional values up to 2.5"),
        (np.array([[0.0, -1.0], [1.0, 0.0]]), r"negative values \(down to -1\)"),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), r"NaN or infinite"),
    ],
)
def test_impossible_values_are_errors(values, message):
    with pytest.raises(MaskError, match=message):
        load_mask(values)


def test_label_on_soft_or_boolean_masks_is_an_error(square):
    with pytest.raises(MaskError, match=r"is boolean .* drop label="):
        load_mask(square, label=1)
    with pytest.raises(MaskError, match=r"fractional values \(a soft mask\): drop label="):
        load_mask(np.array([[0.0, 0.5], [1.0, 0.0]]), label=1)


@pytest.mark.parametrize(
    ("label", "error", "message"),
    [
        (True, TypeError, "ids must be ints"),
        (1.0, TypeError, "must be an int id or a list"),
        ("3", TypeError, "must be an int id or a list"),
        ([], ValueError, "empty list"),
        (-1, ValueError, "non-negative"),
    ],
)
def test_bad_labels_are_refused(label, error, message):
    with pytest.raises(error, match=message):
        check_label(label)


def test_labels_accept_numpy_ints_and_sets():
    assert check_label(np.int64(3)) == (3,)
    assert check_label({7, 3}) == (3, 7)


def test_coco_polygons_and_rle_become_masks():
    pytest.importorskip("pycocotools", reason="coco_mask needs the optional pycocotools")
    # A 10 x 10 square polygon at x 15..25, y 10..20 (COCO: x, y pixel corners).
    polygon = [[15, 10, 25, 10, 25, 20, 15, 20]]
    from_polygon = coco_mask(polygon, *SHAPE)
    assert from_polygon.shape == SHAPE and 90 <= from_polygon.sum() <= 121
    from pycocotools import mask as coco

    rle = coco.encode(np.asfortranarray(from_polygon.astype(np.uint8)))
    np.testing.assert_array_equal(coco_mask(rle, *SHAPE), from_polygon)
    with pytest.raises(
        MaskError, match=r"the RLE's size is \[30, 40\], but the image is \[40, 30\]"
    ):
        coco_mask(rle, 40, 30)
