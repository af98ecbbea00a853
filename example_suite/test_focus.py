"""Where does the shipped model look? One test per kind of assertion.

The model ``vitattn_tiny_shapes`` (set in pytest.ini) classifies the shape in each image.
Its masks are exact, so we can say precisely what "looking at the object" means and test it.
Run with ``--vitattn-report`` to see every heatmap grid these tests computed.
"""

from __future__ import annotations

from conftest import DATA, IMAGES, mask_of


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


def test_attention_moves_onto_the_object_with_depth(vitattn, shape_image):
    """Early layers look around; the last layer looks at the object more than the first."""
    attn = vitattn(shape_image)
    mask = mask_of(shape_image)
    first = attn.layer(0).mean_heads().mass_in(mask)
    last = attn.layer(-1).mean_heads().mass_in(mask)
    assert last > first, f"mass on the object: first layer {first:.2f}, last layer {last:.2f}"


def test_a_batch_of_images_is_one_forward_pass(vitattn):
    """A list of images runs as one batch and gives one result per image."""
    results = vitattn(IMAGES)
    assert [result.image_label for result in results] == [path.name for path in IMAGES]
    for result, image in zip(results, IMAGES, strict=True):
        result.expect(layer=-1).mass_in(mask_of(image), at_least=0.4)


def test_single_heads_and_rollout(vitattn):
    """Select one head, fuse heads by max, or follow attention through all layers (rollout)."""
    image = DATA / "cross_1.png"
    attn = vitattn(image)
    best_head = max(
        range(attn.num_heads), key=lambda h: attn.layer(-1).head(h).mass_in(mask_of(image))
    )
    attn.expect(layer=-1, head=best_head).mass_in(mask_of(image), at_least=0.5)
    attn.expect(layer=-1, fusion="max").pointing_game(mask_of(image))
    attn.expect(rollout=True).mass_in(mask_of(image), at_least=0.2)
