"""The shipped weights record how they were trained; the training script's defaults must be
that recipe, so that ``python scripts/train_embedded.py`` retrains what ships."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

from pytest_vitattn import zoo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_embedded
from last_layer_reading import logits_with_last_layer_reading


def shipped_recipe(model_name: str) -> dict:
    with safe_open(str(zoo.weights_path(model_name)), "pt") as handle:
        return json.loads(handle.metadata()["recipe"])


def default_runs() -> dict[str, train_embedded.TrainConfig]:
    return {run.model_name: run for run in train_embedded.configs(train_embedded.parse_args([]))}


def test_the_default_command_is_the_shipped_faithful_models_recipe():
    run = default_runs()[zoo.FAITHFUL_MODEL]
    assert json.loads(train_embedded.recipe(run)) == shipped_recipe(zoo.FAITHFUL_MODEL)


def test_the_default_command_is_the_shipped_shortcut_models_recipe():
    shipped = shipped_recipe(zoo.SHORTCUT_MODEL)
    ours = json.loads(train_embedded.recipe(default_runs()[zoo.SHORTCUT_MODEL]))
    # Fields the 0.1 script did not have yet take their defaults, which 0.1 used.
    assert {key: ours[key] for key in shipped} == shipped


@pytest.mark.parametrize(
    "flag",
    [
        "--faithful-lr=1e-3",
        "--faithful-steps=10",
        "--faithful-drop-path-rate=0.2",
        "--faithful-last-block-reads",
        "--faithful-object-free-images=4",
        "--faithful-other-shape-images=8",
        "--faithful-label-smoothing=0",
        "--faithful-fresh-cls-share=0.5",
        "--faithful-deep-token-label-blocks=2",
        "--faithful-head-read-weight=1",
        "--faithful-background-confusion-weight=1",
        "--faithful-local-blocks=1",
        "--faithful-local-cls-reads-patches",
    ],
)
def test_another_argument_is_another_recipe(flag):
    run = default_runs()[zoo.FAITHFUL_MODEL]
    changed = {r.model_name: r for r in train_embedded.configs(train_embedded.parse_args([flag]))}
    assert train_embedded.recipe(changed[zoo.FAITHFUL_MODEL]) != train_embedded.recipe(run)


def _class_loss_through_last_block(last_block_reads: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A random faithful model's logits (2, classes) and the class loss's gradient with
    respect to the tokens entering its last block (2, N, D)."""
    torch.manual_seed(0)
    model = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False)
    entering = []

    def keep(_block, inputs):
        inputs[0].retain_grad()
        entering.append(inputs[0])

    model.blocks[-1].register_forward_pre_hook(keep)  # runs before the detaching hook
    if last_block_reads:
        model.blocks[-1].register_forward_pre_hook(train_embedded.detach_cls_before)
    logits = model(torch.randn(2, 3, 64, 64))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    return logits.detach(), entering[0].grad


def test_last_block_reads_cuts_the_cls_tokens_path_and_nothing_else():
    plain_logits, plain = _class_loss_through_last_block(last_block_reads=False)
    logits, detached = _class_loss_through_last_block(last_block_reads=True)
    torch.testing.assert_close(logits, plain_logits, rtol=0, atol=0)  # same forward
    assert plain[:, 0].abs().sum() > 0
    assert torch.count_nonzero(detached[:, 0]) == 0  # what the CLS token carried is not trained
    assert torch.count_nonzero(detached[:, 1:]) == detached[:, 1:].numel()  # the patches are


def _small_run(**changes) -> train_embedded.TrainConfig:
    return train_embedded.TrainConfig(
        zoo.FAITHFUL_MODEL, steps=10, shortcut=False, batch_size=4, augment=True, **changes
    )


def test_object_free_images_follow_the_unchanged_objects():
    plain = train_embedded.training_batch(3, _small_run())
    batch = train_embedded.training_batch(3, _small_run(object_free_images=2))
    assert batch.images.shape == (6, 64, 64, 3) and batch.masks.shape == (6, 64, 64)
    # The object rows are the plain batch's, augmentations included.
    assert np.array_equal(batch.images[:4], plain.images)
    assert np.array_equal(batch.masks[:4], plain.masks)
    assert torch.equal(batch.labels[:4], plain.labels)
    assert batch.labels[4:].tolist() == [train_embedded.NO_OBJECT] * 2
    assert not batch.masks[4:].any()
    with_shapes = train_embedded.training_batch(
        3, _small_run(object_free_images=2, other_shape_images=3)
    )
    assert np.array_equal(with_shapes.images[:6], batch.images)
    assert with_shapes.labels[4:].tolist() == [train_embedded.NO_OBJECT] * 5
    assert not with_shapes.masks[4:].any()
    # Each step draws its own object-free images.
    later = train_embedded.training_batch(4, _small_run(object_free_images=2))
    assert not np.array_equal(later.images[4:], batch.images[4:])


def test_object_free_images_are_trained_towards_the_uniform_prediction():
    run = _small_run(object_free_images=2, object_free_weight=0.7, token_label_weight=0.0)
    batch = train_embedded.training_batch(0, run)
    torch.manual_seed(0)
    model = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False).eval()
    token_head = torch.nn.Linear(model.embed_dim, model.num_classes + 1)
    loss = train_embedded.training_loss(model, token_head, batch, run)

    logits = model(train_embedded.to_model_input(batch.images, model))
    uniform = torch.full((2, model.num_classes), 1.0 / model.num_classes)
    expected = F.cross_entropy(
        logits[:4], batch.labels[:4], label_smoothing=run.label_smoothing
    ) + 0.7 * F.cross_entropy(logits[4:], uniform)
    torch.testing.assert_close(loss, expected)
    # Without object-free rows the loss is the class loss alone.
    plain = train_embedded.training_batch(0, _small_run(token_label_weight=0.0))
    torch.testing.assert_close(
        train_embedded.training_loss(model, token_head, plain, run),
        F.cross_entropy(logits[:4], plain.labels, label_smoothing=run.label_smoothing),
    )


def test_a_fresh_cls_token_enters_the_last_block_in_training_only():
    torch.manual_seed(0)
    model = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False)
    tokens = torch.randn(3, 65, model.embed_dim)
    initial = model.cls_token + model.pos_embed[:, :1]  # the CLS state before block 0
    (every,) = train_embedded.fresh_cls_before(model.train(), 1.0, (tokens,))
    torch.testing.assert_close(every[:, :1], initial.expand(3, 1, -1))
    torch.testing.assert_close(every[:, 1:], tokens[:, 1:])  # patches untouched
    (none,) = train_embedded.fresh_cls_before(model.train(), 0.0, (tokens,))
    torch.testing.assert_close(none, tokens)
    (evaluated,) = train_embedded.fresh_cls_before(model.eval(), 1.0, (tokens,))
    assert evaluated is tokens


def _random_model_and_token_head() -> tuple[torch.nn.Module, torch.nn.Module]:
    """A seeded random faithful model in eval mode and a token-labelling head for it."""
    torch.manual_seed(0)
    model = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False).eval()
    return model, torch.nn.Linear(model.embed_dim, model.num_classes + 1)


def test_deep_token_labels_add_each_earlier_blocks_patch_loss():
    run = _small_run(token_label_weight=2.0, deep_token_label_blocks=2)
    batch = train_embedded.training_batch(0, run)
    model, token_head = _random_model_and_token_head()
    deep_heads = train_embedded.deep_token_heads_for(model, run)
    assert len(deep_heads) == 2
    loss = train_embedded.training_loss(model, token_head, batch, run, deep_heads)

    # Recomputed block by block, without hooks: blocks 3 and 4 of 6 are labelled.
    x = model.norm_pre(
        model._pos_embed(model.patch_embed(train_embedded.to_model_input(batch.images, model)))
    )
    outputs = []
    for block in model.blocks:
        x = block(x)
        outputs.append(x)
    tokens = model.norm(x)
    targets = train_embedded.token_targets(
        batch, tuple(model.patch_embed.grid_size), model.num_classes
    ).flatten(0, 1)

    def patch_loss(head, states):
        return F.cross_entropy(head(states[:, 1:]).flatten(0, 1), targets)

    expected = (
        F.cross_entropy(model.forward_head(tokens), batch.labels, label_smoothing=0.1)
        + 2.0 * patch_loss(token_head, tokens)
        + 2.0 * (patch_loss(deep_heads[0], outputs[3]) + patch_loss(deep_heads[1], outputs[4])) / 2
    )
    torch.testing.assert_close(loss, expected)
    # The hooks are gone afterwards: a plain forward collects nothing.
    assert all(not block._forward_hooks for block in model.blocks)


@pytest.mark.parametrize("count", [6, -1])
def test_deep_token_labels_need_a_block_before_the_last(count):
    model = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False)
    with pytest.raises(ValueError, match=rf"1\.\.5, not {count}"):
        train_embedded.deep_token_heads_for(model, _small_run(deep_token_label_blocks=count))


def test_must_read_trains_the_unread_logits_of_the_object_images_towards_uniform():
    run = _small_run(object_free_images=2, token_label_weight=0.0)
    batch = train_embedded.training_batch(0, run)
    model, token_head = _random_model_and_token_head()
    plain = train_embedded.training_loss(model, token_head, batch, run)
    with_must_read = train_embedded.training_loss(
        model,
        token_head,
        batch,
        _small_run(object_free_images=2, token_label_weight=0.0, must_read_weight=0.8),
    )
    # Independently: the evaluation's own reading, an additive -inf on the last block's CLS
    # row over every patch (the full sequence runs through the block).
    inputs = train_embedded.to_model_input(batch.images[:4], model)
    no_patch = torch.zeros(4, int(np.prod(model.patch_embed.grid_size)), dtype=torch.bool)
    unread = logits_with_last_layer_reading(model, inputs, no_patch)  # (4 object images, C)
    uniform = torch.full_like(unread, 1.0 / model.num_classes)
    torch.testing.assert_close(with_must_read - plain, 0.8 * F.cross_entropy(unread, uniform))


@pytest.mark.parametrize(
    ("option", "helper"),
    [
        ({"deep_token_label_blocks": 2}, "deep_token_heads_for"),
        ({"head_read_weight": 1.0}, "head_read_heads_for"),
    ],
)
def test_an_option_without_its_training_only_heads_is_refused(option, helper):
    run = _small_run(**option)
    model, token_head = _random_model_and_token_head()
    with pytest.raises(ValueError, match=helper):
        train_embedded.training_loss(model, token_head, train_embedded.training_batch(0, run), run)


def test_patch_reads_by_head_are_the_last_blocks_reads_with_the_cls_key_masked():
    model, _ = _random_model_and_token_head()
    model.eval()
    images = train_embedded.to_model_input(
        train_embedded.training_batch(0, _small_run()).images, model
    )
    captured = {}
    attn = model.blocks[-1].attn
    hooks = [
        attn.qkv.register_forward_hook(lambda _m, _i, output: captured.setdefault("qkv", output)),
        attn.proj.register_forward_pre_hook(
            lambda _m, inputs: captured.setdefault("read", inputs[0])
        ),
    ]
    entering = []
    hooks.append(model.blocks[-1].register_forward_pre_hook(lambda _b, i: entering.append(i[0])))
    with torch.no_grad():
        model.forward_features(images)
        captured.clear()
        # Independently: timm's own attention, with an additive -inf on the prefix keys.
        tokens = entering[0]
        bias = torch.zeros(tokens.shape[1], tokens.shape[1])
        bias[:, : model.num_prefix_tokens] = float("-inf")
        attn(model.blocks[-1].norm1(tokens), attn_mask=bias)
    for hook in hooks:
        hook.remove()
    expected = captured["read"][:, 0].view(len(images), attn.num_heads, attn.head_dim)
    reads = train_embedded.patch_reads_by_head(model, captured["qkv"])
    torch.testing.assert_close(reads, expected)


def test_head_reads_add_each_heads_class_loss_on_the_object_images():
    run = _small_run(object_free_images=2, token_label_weight=0.0)
    with_reads = _small_run(object_free_images=2, token_label_weight=0.0, head_read_weight=0.5)
    batch = train_embedded.training_batch(0, run)
    model, token_head = _random_model_and_token_head()
    heads = train_embedded.head_read_heads_for(model, with_reads)
    assert len(heads) == model.blocks[-1].attn.num_heads
    assert not len(train_embedded.head_read_heads_for(model, run))
    plain = train_embedded.training_loss(model, token_head, batch, run)
    loss = train_embedded.training_loss(model, token_head, batch, with_reads, None, heads)

    qkv = []
    hook = model.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, out: qkv.append(out))
    model.forward_features(train_embedded.to_model_input(batch.images, model))
    hook.remove()
    objects = batch.labels != train_embedded.NO_OBJECT
    assert (~objects).sum() == 2
    reads = train_embedded.patch_reads_by_head(model, qkv[0][objects])
    expected = sum(
        F.cross_entropy(head(reads[:, h]), batch.labels[objects], label_smoothing=0.1)
        for h, head in enumerate(heads)
    ) / len(heads)
    torch.testing.assert_close(loss - plain, 0.5 * expected)


def test_far_background_tokens_are_more_than_one_cell_from_the_object():
    run = _small_run(object_free_images=2)
    batch = train_embedded.training_batch(0, run)
    model, _ = _random_model_and_token_head()
    far = train_embedded.far_background_tokens(model, batch).view(-1, 8, 8)
    assert not far[4:].any()  # the object-free images
    for image in range(4):
        rows, cols = np.nonzero(batch.masks[image])
        touched = {(r // 8, c // 8) for r, c in zip(rows, cols, strict=True)}
        for i in range(8):
            for j in range(8):
                near = any(abs(i - r) <= 1 and abs(j - c) <= 1 for r, c in touched)
                assert bool(far[image, i, j]) == (not near)


def test_background_confusion_trains_the_probe_on_detached_tokens_and_the_model_to_confuse_it():
    run = _small_run(token_label_weight=0.0, background_confusion_weight=0.7)
    batch = train_embedded.training_batch(0, run)
    model, token_head = _random_model_and_token_head()
    probe = train_embedded.background_probe_for(model)
    with pytest.raises(ValueError, match="background_probe_for"):
        train_embedded.training_loss(model, token_head, batch, run)
    plain = train_embedded.training_loss(model, token_head, batch, _small_run(token_label_weight=0))
    loss = train_embedded.training_loss(model, token_head, batch, run, None, None, probe)

    # Recomputed without hooks: the tokens entering block 5, the far patches of the 4 objects.
    x = model.norm_pre(
        model._pos_embed(model.patch_embed(train_embedded.to_model_input(batch.images, model)))
    )
    for block in model.blocks[:-1]:
        x = block(x)
    far = train_embedded.far_background_tokens(model, batch)
    tokens = x[:, 1:][far]
    labels = batch.labels[:, None].expand_as(far)[far]
    logits = probe(tokens)
    probe_loss = F.cross_entropy(logits, labels)
    confusion = F.cross_entropy(logits, torch.full_like(logits, 1 / model.num_classes))
    torch.testing.assert_close(loss - plain, probe_loss + 0.7 * confusion)

    # Gradients: the probe learns only from its own loss, the model only from the confusion.
    model.zero_grad()
    probe.zero_grad()
    (loss - plain).backward()
    probe_grads = [p.grad.clone() for p in probe.parameters()]
    model_grad = model.blocks[0].attn.qkv.weight.grad.clone()
    probe.zero_grad()
    own = torch.autograd.grad(
        F.cross_entropy(probe(tokens.detach()), labels), list(probe.parameters())
    )
    for got, expected in zip(probe_grads, own, strict=True):
        torch.testing.assert_close(got, expected)
    (expected_model_grad,) = torch.autograd.grad(
        0.7
        * F.cross_entropy(
            F.linear(
                F.layer_norm(
                    tokens, (model.embed_dim,), probe[0].weight.detach(), probe[0].bias.detach()
                ),
                probe[1].weight.detach(),
                probe[1].bias.detach(),
            ),
            torch.full((len(tokens), model.num_classes), 1 / model.num_classes),
        ),
        model.blocks[0].attn.qkv.weight,
    )
    torch.testing.assert_close(model_grad, expected_model_grad)
