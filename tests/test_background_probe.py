"""scripts/background_probe.py: the patch groups, the tokens it reads and its probe."""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import background_probe

from pytest_vitattn import zoo
from pytest_vitattn.synthetic import make_batch


def test_the_groups_split_every_patch_by_its_distance_from_the_object():
    fractions = torch.zeros(1, 5, 5)
    fractions[0, 2, 2] = 0.3  # the object touches the centre patch only
    groups = {name: group(fractions).view(5, 5) for name, group in background_probe.GROUPS.items()}
    touched, near, far = groups.values()
    assert touched.sum() == 1 and touched[2, 2]
    assert near.sum() == 8 and near[1:4, 1:4].sum() == 8
    assert far.sum() == 16 and not far[1:4, 1:4].any()


def test_tokens_are_the_patch_tokens_entering_each_block():
    model = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False).eval()
    images, _, _ = make_batch(range(3), split="val", shortcut=False)
    tokens = background_probe.tokens_entering_blocks(model, images)
    assert tokens.shape == (len(model.blocks), 3, 64, model.embed_dim)
    with torch.no_grad():
        x = model.patch_embed(background_probe.to_model_input(images, model))
        x = model.norm_pre(model._pos_embed(x))
        for k, block in enumerate(model.blocks):
            torch.testing.assert_close(tokens[k], x[:, 1:])
            x = block(x)


def test_the_probe_finds_a_linear_class_and_not_a_random_one():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2000, 16, generator=generator)
    linear = tokens[:, :5].argmax(dim=1)
    random = torch.randint(0, 5, (2000,), generator=generator)
    fit, held_out = slice(0, 1000), slice(1000, 2000)

    def accuracy(labels):
        probe = background_probe.fit_probe(tokens[fit], labels[fit])
        with torch.no_grad():
            return float((probe(tokens[held_out]).argmax(1) == labels[held_out]).float().mean())

    assert accuracy(linear) > 0.9
    assert accuracy(random) < 0.3
