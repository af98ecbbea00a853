"""Images and masks from paths, PIL, arrays and tensors; odd modes converted, bad ones refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_vitattn.errors import ImageError, MaskError
from pytest_vitattn.images import label_of, load_image, load_mask


def test_a_path_loads_as_rgb_and_is_labelled_by_its_file_name(tmp_path, photo):
    path = tmp_path / "bird.png"
    photo.save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (400, 300)
    assert label_of(path, 0) == "bird.png"
    assert label_of(photo, 3) == "image[3]"


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_other_modes_are_converted_to_rgb(mode, photo):
    if mode == "I;16":  # the full 16-bit range: grey levels x 257
        grey = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
        converted = Image.fromarray(grey)
    elif mode == "1":
        converted = photo.convert("L").convert(mode)
    else:
        converted = photo.convert(mode)
    image = load_image(converted)
    assert image.mode == "RGB" and image.size == photo.size


def test_transparent_pixels_become_white_not_black():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_images_keep_their_range():
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert load_image(deep).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    wide = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    wide.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_tensors_in_unit_range_and_uint8_are_accepted():
    assert load_image(torch.rand(3, 20, 30)).shape == (3, 20, 30)
    assert load_image(torch.rand(1, 3, 20, 30)).shape == (3, 20, 30)
    # 8-bit pixels in a tensor become the PIL image a file of them gives (see test_input_forms)
    assert load_image(torch.full((3, 4, 4), 255, dtype=torch.uint8)).getpixel((0, 0)) == (
        255,
        255,
        255,
    )


def test_a_normalised_tensor_is_refused_with_the_fix():
    with pytest.raises(ImageError, match=r"outside \[0, 1\]: pass the image before normalisation"):
        load_image(torch.randn(3, 16, 16) * 3)


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError, match=r"image file not found: .*nope\.png"):
        load_image(tmp_path / "nope.png")


def test_an_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageError, match=r"cannot read image file .*broken\.jpg"):
        load_image(path)


def test_a_wrong_type_says_what_is_accepted():
    with pytest.raises(ImageError, match="cannot use a dict as an image: pass a file path"):
        load_image({"pixels": 1})


def test_masks_from_files_arrays_and_tensors(tmp_path, square_mask):
    path = tmp_path / "mask.png"
    Image.fromarray(square_mask.astype(np.uint8) * 255).save(path)
    from_file = load_mask(path)
    assert from_file.shape == (300, 400) and from_file.max() == 1.0
    np.testing.assert_array_equal(from_file, square_mask.astype(np.float32))
    np.testing.assert_array_equal(load_mask(square_mask.astype(np.uint8) * 255), from_file)
    np.testing.assert_array_equal(load_mask(torch.from_numpy(square_mask)), from_file)


def test_a_mask_must_be_two_dimensional():
    with pytest.raises(MaskError, match=r"a mask must be 2-D \(height, width\)"):
        load_mask(np.ones((2, 4, 4)))


def test_a_missing_mask_file_is_a_mask_error(tmp_path):
    with pytest.raises(MaskError, match="mask file not found"):
        load_mask(tmp_path / "missing_mask.png")
