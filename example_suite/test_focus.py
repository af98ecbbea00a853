"""Where does the shipped model look? One test per kind of assertion.

The model ``vitattn_tiny_shapes`` (set in pytest.ini) classifies the shape in each image.
Its masks are exact, so we can say precisely what "looking at the object" means and test it.
Run with ``--vitattn-report`` to see every heatmap grid these tests computed.
"""

from __future__ import annotations

import pytest
from conftest import DATA, IMAGES, mask_of

from pytest_vitattn.errors import AttentionValueError


def test_last_layer_attention_lies_on_the_object(vitattn, shape_image):
    """Relevance mass: the object, 1.5-15% of the image, draws at least 40% of the last layer's
    CLS attention (the failure message shows the chance level beside the value)."""
    attn = vitattn(shape_image)
    attn.expect(layer=-1).mass_in(mask_of(shape_image), at_least=0.4)


def test_the_most_attended_patch_is_on_the_object(vitattn, shape_image):
    """Pointing game: the single highest-attention patch touches the object."""
    attn = vitattn(shape_image)
    attn.expect(layer=-1).pointing_game(mask_of(shape_image))


def test_the_top_patches_are_the_objects_patches(vitattn, shape_image):
    """Top-k IoU: the most attended patches (as many as the object covers) are the object's."""
    attn = vitattn(shape_image)
    attn.expect(layer=-1).top_k_iou(mask_of(shape_image), at_least=0.3)


def test_last_layer_attention_is_concentrated(vitattn, shape_image):
    """Concentration (1 - normalised entropy): the last layer does not spread attention evenly."""
    attn = vitattn(shape_image)
    attn.expect(layer=-1).concentration(at_least=0.2)


def test_plain_numbers_work_with_plain_assert(vitattn):
    """Every metric is also a number, for assertions of your own."""
    image = DATA / "circle_1.png"
    last = vitattn(image).layer(-1).mean_heads()
    mass = last.mass_in(mask_of(image))
    chance = 0.15  # no object in data/ covers more than 15% of its image
    assert mass > 3 * chance, f"attention on the circle is {mass:.2f}"


def test_the_model_reads_the_image_in_its_last_block(vitattn, shape_image):
    """Which layers have a map: before its last block this model keeps the CLS token to
    itself (``zoo.MaskedBlock``), so that block's read is the only one the class can come
    from. The plugin leaves the other blocks out, as it leaves out CaiT's patch blocks, and
    says which block each layer is."""
    attn = vitattn(shape_image)
    assert attn.num_layers == 1, attn
    assert attn.layer(-1).label == "layer 0 of 0..0 (block 5)"


def test_a_batch_of_images_is_one_forward_pass(vitattn):
    """A list of images runs as one batch and gives one result per image."""
    results = vitattn(IMAGES)
    assert [result.image_label for result in results] == [path.name for path in IMAGES]
    for result, image in zip(results, IMAGES, strict=True):
        result.expect(layer=-1).mass_in(mask_of(image), at_least=0.4)


def test_single_heads_and_fused_heads(vitattn):
    """Select one head, or fuse the heads by max instead of the mean."""
    image = DATA / "cross_1.png"
    attn = vitattn(image)
    best_head = max(
        range(attn.num_heads), key=lambda h: attn.layer(-1).head(h).mass_in(mask_of(image))
    )
    attn.expect(layer=-1, head=best_head).mass_in(mask_of(image), at_least=0.5)
    attn.expect(layer=-1, fusion="max").pointing_game(mask_of(image))


def test_rollout_needs_every_block_read(vitattn):
    """Attention rollout (Abnar & Zuidema 2020) chains every block's attention. For a model
    whose blocks are all read, ``attn.expect(rollout=True).mass_in(mask, at_least=...)``
    checks it like any map; here the plugin leaves blocks 0-4 out, and a rollout of block 5
    alone would be a wrong number, so it refuses and says why."""
    attn = vitattn(DATA / "circle_1.png")
    with pytest.raises(
        AttentionValueError, match="other blocks having no CLS attention over the patches"
    ):
        attn.rollout()
