"""Numbers for the README's "Masks" section: each stored form of one mask, and each input form
of one image, read now and read as pytest-vitattn 0.1 did.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/mask_formats.py

Shipped model vitattn_tiny_shapes, example_suite/data/circle_1.png, last layer, mean of
heads. The 0.1 readings are re-enacted here from its code: masks were grey levels / 255
(files, and arrays with values above 1), and float tensors were resized by torch, not PIL.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pytest_vitattn.probe as probe_module
from pytest_vitattn.models import ModelSpec, load_model

DATA = Path(__file__).resolve().parents[1] / "example_suite" / "data"


def png(array: np.ndarray, palette: list[int] | None = None) -> Image.Image:
    """``array`` saved as a PNG and opened again, as a user's file would be."""
    image = Image.fromarray(array, mode="P" if palette else None)
    if palette:
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return Image.open(buffer)


def old_mask(source: object) -> np.ndarray:
    """pytest-vitattn 0.1's load_mask: files as grey level / 255, arrays / 255 above 1."""
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("L"), dtype=np.float32) / 255
    array = np.asarray(source, dtype=np.float32)
    return array / 255 if array.max() > 1 else array


def main() -> None:
    probe = probe_module.Probe(load_model(ModelSpec("vitattn_tiny_shapes")))
    attn = probe(DATA / "circle_1.png")
    last = attn.layer(-1).mean_heads()
    circle = np.asarray(Image.open(DATA / "circle_1_mask.png")) > 0
    labels = (circle * 3).astype(np.uint8)
    voc = np.where(circle, 15, 0).astype(np.uint8)
    colours = [0] * 768
    colours[45:48] = [192, 128, 128]  # VOC class 15 (person)
    forms = [
        ("bool array", circle, None),
        ("0/255 PNG", png(circle.astype(np.uint8) * 255), None),
        ("0/1 PNG", png(circle.astype(np.uint8)), None),
        ("label map array, object id 3", labels, 3),
        ("label map PNG, object id 3", png(labels), 3),
        ("VOC palette PNG, class 15", png(voc, colours), 15),
    ]
    print("| mask stored as | mass now | mass as 0.1 read it |")
    print("|---|---|---|")
    for name, source, label in forms:
        now = last.mass_in(source, label=label)
        before = last.mass_in(old_mask(source))
        print(f"| {name} | {now:.4f} (`label={label}`) | {before:.4f} |")

    inverted = ~circle
    print(
        f"\ninverted mask: covers {inverted.mean():.1%}, mass {last.mass_in(inverted):.3f}, "
        f"chance {attn.mask(inverted).grid.mean():.3f}"
    )

    image = Image.open(DATA / "circle_1.png").convert("RGB")
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    print("\n| image passed as | mass now |")
    print("|---|---|")
    for name, form in (
        ("path", DATA / "circle_1.png"),
        ("PIL", image),
        ("uint8 array", np.asarray(image)),
        ("(3, h, w) float tensor", tensor),
    ):
        print(f"| {name} | {probe(form).layer(-1).mean_heads().mass_in(circle):.5f} |")
    probe_module.load_image = lambda source: source.float()  # 0.1: tensors resized by torch
    probe_module.content_hash = lambda image: "0" * 64
    old = probe(tensor).layer(-1).mean_heads().mass_in(circle)
    print(f"| (3, h, w) float tensor, as 0.1 resized it | {old:.5f} |")


if __name__ == "__main__":
    main()
