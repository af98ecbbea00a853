"""Write the example suite's images and masks as files a user can open.

    .venv/bin/python scripts/make_example_data.py [--out example_suite/data]

Two generated images per shape class from the "example" split (never used in training),
saved 4x upscaled (256 x 256) so they are comfortable to look at; the plugin resizes them to
the model's 64 x 64 input and brings the masks along. For each image:

    <shape>_<n>.png          the image ("varied" style: any colours, turned shapes)
    <shape>_<n>_mask.png     its exact object mask (white = object)

and images of the 0.1 "bright" style, on which the shortcut and the brightness model were
trained (the object is the brightest thing in the image):

    bright/<shape>_<n>.png       a "bright" image (the first ones of its class in "example")
    bright/<shape>_<n>_mask.png  its mask
    marked/<shape>_<n>.png       the same image with the shortcut model's corner marker
    marker_mask.png              where that marker is
    dark/<shape>_<n>.png         the same image with the object recoloured dark (same mask)

Deterministic: running it again rewrites byte-identical files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from pytest_vitattn.synthetic import (
    SHAPE_CLASSES,
    SPLITS,
    Sample,
    _hsv_to_rgb,
    make_sample,
    marker_mask,
)

PER_CLASS = 2
UPSCALE = 4
# The recoloured object of dark/: HSV value in this range (0-1), any hue, plus the
# generator's sensor noise; the "bright" backgrounds have values 0.15-0.55.
DARK_VALUES = (0.0, 0.12)


def _save(array_or_image, path: Path) -> None:
    image = (
        array_or_image
        if isinstance(array_or_image, Image.Image)
        else Image.fromarray(array_or_image)
    )
    size = (image.width * UPSCALE, image.height * UPSCALE)
    # Nearest keeps mask edges exact, so area fractions survive the round trip.
    image.resize(size, Image.Resampling.NEAREST).save(path, optimize=True)


def example_indices(per_class: int = PER_CLASS, style: str = "varied") -> dict[str, list[int]]:
    """The first ``per_class`` indices of each class in the "example" split."""
    chosen: dict[str, list[int]] = {name: [] for name in SHAPE_CLASSES}
    index = 0
    while any(len(found) < per_class for found in chosen.values()):
        name = SHAPE_CLASSES[make_sample(index, split="example", style=style).label]
        if len(chosen[name]) < per_class:
            chosen[name].append(index)
        index += 1
    return chosen


def darkened(sample: Sample, index: int) -> np.ndarray:
    """``sample``'s image, (H, W, 3) uint8, with the object recoloured dark (seeded by index)."""
    rng = np.random.default_rng([SPLITS["example"], index, 3])
    colour = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(*DARK_VALUES))
    pixels = np.asarray(sample.image).astype(np.float32)
    noise = rng.normal(0.0, 6.0, size=pixels.shape).astype(np.float32)
    pixels[sample.mask] = colour + noise[sample.mask]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "example_suite" / "data"
    parser.add_argument("--out", type=Path, default=default_out)
    out = parser.parse_args().out
    (out / "marked").mkdir(parents=True, exist_ok=True)
    for name, indices in example_indices().items():
        for number, index in enumerate(indices, start=1):
            stem = f"{name}_{number}"
            plain = make_sample(index, split="example")
            _save(plain.image, out / f"{stem}.png")
            _save((plain.mask * 255).astype(np.uint8), out / f"{stem}_mask.png")
    _save((marker_mask() * 255).astype(np.uint8), out / "marker_mask.png")
    (out / "bright").mkdir(exist_ok=True)
    (out / "dark").mkdir(exist_ok=True)
    for name, indices in example_indices(style="bright").items():
        for number, index in enumerate(indices, start=1):
            stem = f"{name}_{number}"
            bright = make_sample(index, split="example", style="bright")
            marked = make_sample(index, split="example", style="bright", shortcut=True)
            _save(bright.image, out / "bright" / f"{stem}.png")
            _save(marked.image, out / "marked" / f"{stem}.png")
            _save((bright.mask * 255).astype(np.uint8), out / "bright" / f"{stem}_mask.png")
            _save(darkened(bright, index), out / "dark" / f"{stem}.png")
    print(f"wrote {len(list(out.rglob('*.png')))} files to {out}")


if __name__ == "__main__":
    main()
