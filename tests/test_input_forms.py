"""Every form of the same pixels gives the same maps; 16-bit images are read as documented.

pytest-vitattn 0.1 resized float tensors with torch and everything else with PIL, so the same
image gave mass 0.92268 as a (3, h, w) tensor and 0.92317 as a path (shipped model,
circle_1.png; ``python scripts/input_forms.py``). 8-bit pixels in any form now take the PIL
path; float tensors with finer levels keep the tensor path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_vitattn.errors import ImageError
from pytest_vitattn.images import load_image
from pytest_vitattn.models import ModelSpec, load_model
from pytest_vitattn.probe import Probe

# The 0.1 faithful model on its own images (shipped unchanged as vitattn_tiny_shapes_brightness
# and data/bright/): the numbers pinned here were measured with them.
DATA = Path(__file__).resolve().parents[1] / "example_suite" / "data" / "bright"
IMAGE = DATA / "circle_1.png"


@pytest.fixture(scope="module")
def probe() -> Probe:
    return Probe(load_model(ModelSpec("vitattn_tiny_shapes_brightness")))


@pytest.fixture(scope="module")
def circle() -> np.ndarray:
    return np.asarray(Image.open(DATA / "circle_1_mask.png")) > 0


def forms() -> dict[str, object]:
    image = Image.open(IMAGE).convert("RGB")
    pixels = np.asarray(image).copy()
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    return {
        "PIL": image,
        "uint8 array": pixels,
        "uint8 tensor": tensor,
        "float tensor (3, h, w)": tensor.float() / 255,
        "float tensor (1, 3, h, w)": (tensor.float() / 255)[None],
    }


def test_every_form_of_the_same_pixels_gives_the_same_maps(probe, circle):
    reference = probe(IMAGE)
    mass = reference.layer(-1).mean_heads().mass_in(circle)
    assert round(mass, 5) == 0.92317
    for name, form in forms().items():
        attn = probe(form)
        assert torch.equal(attn.maps, reference.maps), name
        assert attn.layer(-1).mean_heads().mass_in(circle) == mass, name
        assert attn.record.image_sha256 == reference.record.image_sha256, name
        assert np.array_equal(attn.record.image, reference.record.image), name


def test_float_tensors_with_finer_levels_keep_the_tensor_path():
    fine = torch.linspace(0, 1, 3 * 8 * 8).reshape(3, 8, 8)
    loaded = load_image(fine)
    assert isinstance(loaded, torch.Tensor) and torch.equal(loaded, fine)


def test_a_full_range_16_bit_image_is_its_8_bit_image(probe, tmp_path):
    grey = np.asarray(Image.open(IMAGE).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode.startswith("I")
    assert np.array_equal(np.asarray(load_image(tmp_path / "deep.png"))[..., 0], grey)
    deep, eight = probe(tmp_path / "deep.png"), probe(Image.fromarray(grey))
    assert torch.equal(deep.maps, eight.maps)


def test_12_bit_data_in_a_16_bit_png_is_refused_not_darkened(tmp_path):
    """The issue's case: max 4095 divided by 65535 gave a nearly black image (mean 4.7)."""
    grey = np.asarray(Image.open(IMAGE).convert("L")).astype(np.float64)
    twelve = np.round(grey / 255 * 4095).astype(np.uint16)
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    with pytest.raises(
        ImageError,
        match=r"a 16-bit image whose values only go up to 3565 \(of 65535\): read as 16-bit it "
        r"is nearly black \(mean 5.2 of 255\), but it may hold 10- or 12-bit data",
    ):
        load_image(tmp_path / "twelve.png")
    # The fix the message gives: scale it and pass a float tensor.
    scaled = torch.from_numpy(np.asarray(Image.open(tmp_path / "twelve.png"), np.float32) / 4095)
    loaded = load_image(scaled[None])  # (1, h, w): grey, finer levels than 8 bits
    assert loaded.shape == (3, *grey.shape)
    assert np.abs(loaded[0].numpy() * 255 - grey).max() < 0.05  # 12-bit rounding: 0.031


def test_temporary_masks_are_never_confused_with_each_other(probe, circle):
    """Masks were cached by id(), and a freed temporary's id is reused by the next array:
    the inverted circle then got the circle's cached mask (0.923 instead of 0.077)."""
    last = probe(IMAGE).layer(-1).mean_heads()
    on_circle = [last.mass_in(circle.copy()) for _ in range(3)]
    inverted = [last.mass_in(~circle) for _ in range(3)]
    as_uint8 = last.mass_in(circle.astype(np.uint8))
    assert on_circle == [on_circle[0]] * 3 and as_uint8 == on_circle[0]
    assert inverted == [pytest.approx(1 - on_circle[0], abs=1e-9)] * 3
    assert round(inverted[0], 3) == 0.077
