"""Local blocks of the faithful model's architecture (``zoo.local_attention_bias``,
``zoo.MaskedBlock``): what the mask lets each token read, that the forward pass obeys it, that
both extraction paths read the masked attention exactly, and that the training and
evaluation scripts build the architecture a weights file was trained with."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate_embedded as evaluation
import train_embedded
from evaluate_embedded import to_model_input

from pytest_vitattn import zoo
from pytest_vitattn.errors import AttentionValueError, UnsupportedModelError
from pytest_vitattn.extract.describe import describe
from pytest_vitattn.models import ModelSpec, load_model
from pytest_vitattn.probe import Probe
from pytest_vitattn.records import AttentionRecord
from pytest_vitattn.report.views import grid_view, record_view
from pytest_vitattn.synthetic import make_batch, make_sample


def _model(**architecture) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False, **architecture).eval()


@pytest.mark.parametrize("cls_reads_patches", [False, True])
def test_the_bias_lets_patches_read_their_neighbours_and_never_the_cls_token(cls_reads_patches):
    bias = zoo.local_attention_bias((3, 3), 1, radius=1, cls_reads_patches=cls_reads_patches)
    allowed = bias == 0
    assert bias.shape == (10, 10) and set(bias.unique().tolist()) == {0.0, float("-inf")}
    # The CLS token reads itself, and every patch only where asked.
    assert allowed[0].tolist() == [True] + [cls_reads_patches] * 9
    assert not allowed[1:, 0].any()  # no patch reads it
    # Patch (0, 0) reads (0, 0), (0, 1), (1, 0), (1, 1); the centre patch reads all nine.
    assert allowed[1, 1:].view(3, 3).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert allowed[5, 1:].all()


def _tokens_before_last(model, images, shuffle: bool) -> torch.Tensor:
    """(B, N, dim) tokens entering the last block; ``shuffle`` reverses the patch order
    before the first block (and back after), the CLS token kept in front."""
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        if shuffle:
            x = torch.cat([x[:, :1], x[:, 1:].flip(1)], dim=1)
        for block in model.blocks[:-1]:
            x = block(x)
    return torch.cat([x[:, :1], x[:, 1:].flip(1)], dim=1) if shuffle else x


@pytest.mark.parametrize("cls_reads_patches", [False, True])
def test_with_radius_0_no_patch_token_depends_on_another_before_the_last_block(cls_reads_patches):
    model = _model(local_radius=0, cls_reads_patches=cls_reads_patches)
    images = to_model_input(make_batch(range(3), split="val", shortcut=False)[0], model)
    as_is = _tokens_before_last(model, images, shuffle=False)
    shuffled = _tokens_before_last(model, images, shuffle=True)
    torch.testing.assert_close(shuffled[:, 1:], as_is[:, 1:])  # each patch on its own
    if cls_reads_patches:  # it reads them (and the order of what it reads does not matter)
        torch.testing.assert_close(shuffled[:, 0], as_is[:, 0])
        other = images.flip(-1)
        assert not torch.allclose(_tokens_before_last(model, other, False)[:, 0], as_is[:, 0])
    else:  # it reads nothing: the same vector for every image
        torch.testing.assert_close(as_is[:, 0], as_is[:1, 0].expand_as(as_is[:, 0]))
    # Without local blocks the same shuffle moves every token.
    plain = _model(local_radius=-1)
    assert not torch.allclose(
        _tokens_before_last(plain, images, True)[:, 1:],
        _tokens_before_last(plain, images, False)[:, 1:],
    )


def _masked_cls_rows(model, pixels: torch.Tensor) -> torch.Tensor:
    """(L, H, N) CLS rows of one image, computed block by block from q, k and each block's
    own mask, independently of ``pytest_vitattn.extract``."""
    rows = []
    with torch.no_grad():
        x = model.norm_pre(model._pos_embed(model.patch_embed(pixels)))
        for block in model.blocks:
            attn, y = block.attn, block.norm1(x)
            batch, tokens, dim = y.shape
            qkv = attn.qkv(y).reshape(batch, tokens, 3, attn.num_heads, dim // attn.num_heads)
            q, k, _ = qkv.permute(2, 0, 3, 1, 4)
            scores = attn.q_norm(q) * attn.scale @ attn.k_norm(k).transpose(-2, -1)
            if block.attn_mask is not None:
                scores = scores + block.attn_mask
            rows.append(scores.softmax(dim=-1)[0, :, 0])
            x = block(x)
    return torch.stack(rows)


@pytest.mark.parametrize("extraction", ["fast", "fx"])
def test_both_extraction_paths_read_the_masked_attention(extraction):
    """torch.fx traces ``VisionTransformer.forward``'s ``attn_mask`` argument as a graph
    input; a block that chose its mask by that argument would trace without its own, and
    every map after the first block would be another model's (caught here to 1e-6)."""
    architecture = (("cls_reads_patches", True), ("local_radius", 0))
    torch.manual_seed(0)
    loaded = load_model(ModelSpec(zoo.FAITHFUL_MODEL, "random", kwargs=architecture))
    sample = make_sample(3, split="test")
    attn = Probe(loaded, extraction=extraction, rollout=None)(sample.image)
    pixels = to_model_input(np.array(sample.image)[None], loaded.model)
    rows = _masked_cls_rows(loaded.model, pixels)
    expected = rows[..., 1:] / rows[..., 1:].sum(dim=-1, keepdim=True)
    torch.testing.assert_close(attn.maps, expected.reshape(attn.maps.shape), atol=1e-6, rtol=0)
    assert float(rows[:-1, :, 0].min()) < 0.5  # the CLS token read patches in the local blocks


def test_a_masked_block_refuses_a_second_mask():
    block = _model(local_radius=0, cls_reads_patches=True).blocks[0]
    tokens = torch.zeros(1, 65, 96)
    with pytest.raises(ValueError, match="its own fixed mask"):
        block(tokens, attn_mask=torch.zeros(65, 65))
    assert block.attn_mask.shape == (65, 65)
    assert "attn_mask" not in block.state_dict()  # architecture, not weights


def test_training_builds_the_architecture_its_recipe_records(tmp_path):
    args = train_embedded.parse_args(
        [
            "--model",
            "faithful",
            "--faithful-steps",
            "1",
            "--faithful-local-blocks",
            "0",
            "--faithful-local-cls-reads-patches",
            "--output-dir",
            str(tmp_path),
        ]
    )
    (run,) = train_embedded.configs(args)
    recipe = json.loads(train_embedded.recipe(run))
    assert (recipe["local_radius"], recipe["local_cls_reads_patches"]) == (0, True)
    path = train_embedded.train(run)
    assert set(load_file(path)) == set(_model().state_dict())  # no mask among the weights
    built = evaluation.faithful_architecture(path)
    assert built == {"local_radius": 0, "cls_reads_patches": True}


def test_the_evaluation_builds_the_architecture_of_the_weights_it_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "WEIGHTS_OVERRIDES", {})
    monkeypatch.setattr(evaluation, "ARCHITECTURES", {})
    state = {key: value.half() for key, value in _model().state_dict().items()}
    local = tmp_path / "local.safetensors"
    save_file(state, str(local), metadata={"recipe": json.dumps({"local_radius": 1})})
    evaluation.use_faithful_options(argparse.ArgumentParser(), local)
    model = evaluation.load_model(zoo.FAITHFUL_MODEL)
    expected = zoo.local_attention_bias((8, 8), 1, radius=1, cls_reads_patches=False)
    assert all(torch.equal(block.attn_mask, expected) for block in model.blocks[:-1])
    assert model.blocks[-1].attn_mask is None
    packaged = evaluation.faithful_architecture(zoo.weights_path(zoo.FAITHFUL_MODEL))
    assert packaged == {
        "local_radius": zoo.FAITHFUL_LOCAL_RADIUS,
        "cls_reads_patches": zoo.FAITHFUL_CLS_READS_PATCHES,
    }


def _cls_alone_before_last(radius: int = 0):
    """A random faithful-architecture model whose CLS token reads only itself before the
    last block, loaded as the plugin loads it."""
    torch.manual_seed(0)
    return load_model(ModelSpec(zoo.FAITHFUL_MODEL, "random", kwargs=(("local_radius", radius),)))


@pytest.mark.parametrize("extraction", ["fast", "fx"])
@pytest.mark.parametrize("radius", [0, 1])
def test_blocks_whose_cls_row_reads_no_patch_are_left_out(extraction, radius):
    """Like a class-attention model's patch blocks, blocks 0-4 have no CLS map: the plugin
    reads block 5 alone, as layer 0, exactly as a hand computation of its CLS row."""
    loaded = _cls_alone_before_last(radius)
    assert loaded.anatomy.unread_blocks == (0, 1, 2, 3, 4)
    assert loaded.anatomy.layer_blocks == (5,)
    sample = make_sample(3, split="test")
    attn = Probe(loaded, extraction=extraction, rollout=None)(sample.image)
    pixels = to_model_input(np.array(sample.image)[None], loaded.model)
    rows = _masked_cls_rows(loaded.model, pixels)
    assert float(rows[:-1, :, 1:].abs().max()) == 0.0  # blocks 0-4: nothing on a patch
    last = rows[-1, :, 1:] / rows[-1, :, 1:].sum(dim=-1, keepdim=True)
    assert attn.maps.shape == (1, 3, 8, 8)
    assert attn.layer(-1).label == "layer 0 of 0..0 (block 5)"
    torch.testing.assert_close(attn.maps[0], last.reshape(3, 8, 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(attn.prefix_share[0], rows[-1, :, 0], atol=1e-6, rtol=0)


def test_rollout_is_refused_when_blocks_are_left_out():
    """Rollout chains every block's attention; over the read blocks alone it would be wrong."""
    loaded = _cls_alone_before_last()
    assert not loaded.anatomy.has_rollout
    attn = Probe(loaded, rollout="mean")(make_sample(0, split="test").image)
    with pytest.raises(
        AttentionValueError,
        match=r"rollout is not defined here, .*reads block\(s\) 5 of vitattn_tiny_shapes only",
    ):
        attn.rollout()


def test_the_randomisation_check_counts_blocks_not_layers():
    attn = Probe(_cls_alone_before_last(), rollout=None)(make_sample(0, split="test").image)
    attn.expect(layer=-1).depends_on_weights(at_least=0.0)
    assert attn.record.randomised["first_block"] == 5
    assert attn.record.randomised["label"] == "block 5 of 0..5 re-initialised (seed 0)"
    attn.expect(layer=0).depends_on_weights(blocks=6, at_least=0.0)
    assert attn.record.randomised["first_block"] == 0
    with pytest.raises(AttentionValueError, match=r"layer 0 \(block 5\) has only 6 block"):
        attn.expect(layer=0).depends_on_weights(blocks=7)
    with pytest.raises(
        AttentionValueError, match=r"the model has 1 layer \(0\.\.0, .*block\(s\) 5"
    ):
        attn.layer(1)


def test_a_model_whose_every_cls_row_reads_no_patch_is_refused():
    model = _model(local_radius=0)
    model.blocks[-1].attn_mask = model.blocks[0].attn_mask
    with pytest.raises(UnsupportedModelError, match=r"every block .* keeps the CLS token"):
        describe(model)


def test_a_block_that_masks_the_cls_token_by_other_means_is_refused_by_layer():
    """Only ``zoo.MaskedBlock``'s mask is read; a block that hides the patches from the CLS
    token in its own way is read as it is, and its empty rows are refused, layer by layer."""

    class OwnMask(torch.nn.Module):  # adds a mask of its own to every forward call
        def __init__(self, block: torch.nn.Module, mask: torch.Tensor) -> None:
            super().__init__()
            self.inner, self.mask = block, mask

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return timm.models.vision_transformer.Block.forward(self.inner, x, self.mask)

    model = _model(local_radius=-1)
    mask = zoo.local_attention_bias((8, 8), 1, radius=0, cls_reads_patches=False)
    for block in model.blocks[:2]:
        block.forward = OwnMask(block, mask).forward  # still a MaskedBlock without a mask
    spec = ModelSpec(zoo.FAITHFUL_MODEL, "random", kwargs=(("local_radius", -1),))
    loaded = dataclasses.replace(load_model(spec), model=model, anatomy=describe(model))
    with pytest.raises(AttentionValueError, match=r"the CLS row of layers 0-1 \(every head\)"):
        Probe(loaded, rollout=None)(make_sample(0, split="test").image)


def test_the_evaluation_tables_say_no_read_for_layers_whose_cls_row_reads_no_patch(monkeypatch):
    monkeypatch.setattr(evaluation, "WEIGHTS_OVERRIDES", {})
    monkeypatch.setattr(evaluation, "ARCHITECTURES", {zoo.FAITHFUL_MODEL: {"local_radius": 0}})
    images, labels, masks = make_batch(range(4), split="val", shortcut=False)
    scores = evaluation.score_arrays(
        evaluation.load_model(zoo.FAITHFUL_MODEL), images, labels, masks
    )
    assert all(np.isnan(scores.mass_per_layer[:-1])) and all(
        np.isnan(scores.pointing_per_layer[:-1])
    )
    assert not np.isnan(scores.mass_per_layer[-1]) and not np.isnan(scores.pointing_per_layer[-1])
    row = evaluation.Row(zoo.FAITHFUL_MODEL, marked=False, scores=scores)
    lines = evaluation.per_layer_table([row]).splitlines()[2:]
    assert [line.count("no read") for line in lines] == [2, 2, 2, 2, 2, 0]


def test_records_and_the_report_name_the_block_of_each_layer():
    attn = Probe(_cls_alone_before_last(), rollout=None)(make_sample(0, split="test").image)
    data = attn.record.to_dict()
    assert data["layer_blocks"] == [5]
    assert AttentionRecord.from_dict(data).layer_blocks == [5]
    _, grid = grid_view(attn.maps.numpy(), None, attn.prefix_share.numpy(), None, [5])
    assert [row.label for row in grid.rows] == ["layer 0 (block 5)"]
    assert grid.caption.startswith("CLS attention, 1 layer x 3 heads")
    assert "other blocks have no CLS attention over the patches" in grid.caption
    data["baseline"] = {"maps": data["maps"], "path": "b.safetensors", "status": "compared"}
    view = record_view(data, 0, Path("/root"), Path("/root/out"))
    assert [row.label for row in view.grid.rows] == ["layer 0 (block 5)"]
    assert [row.label for row in view.baseline.rows] == ["layer 0 (block 5)"]
    # A model whose every block is read keeps plain layer names and no block list.
    torch.manual_seed(0)
    every = load_model(ModelSpec(zoo.FAITHFUL_MODEL, "random", kwargs=(("local_radius", -1),)))
    plain = Probe(every, rollout=None)(make_sample(0, split="test").image)
    assert plain.record.layer_blocks is None and plain.layer(0).label == "layer 0 of 0..5"
    _, grid = grid_view(plain.maps.numpy(), None, plain.prefix_share.numpy())
    assert [row.label for row in grid.rows] == [f"layer {k}" for k in range(6)]


def test_other_models_that_read_only_some_blocks_name_them_too():
    """ConViT's CLS token joins after its GPSA blocks, so only the MHSA blocks are read: the
    layers name their blocks and the randomisation check counts blocks. CrossViT's layers are
    blocks nested in multi-scale blocks, which ``model.blocks`` does not index one by one:
    no block mapping, so no block labels and no randomisation by block."""
    torch.manual_seed(0)
    convit = load_model(
        ModelSpec("convit_tiny", "random", kwargs=(("depth", 4), ("local_up_to_layer", 2)))
    )
    assert convit.anatomy.layer_blocks == (2, 3)
    attn = Probe(convit, rollout=None)(make_sample(0, split="test").image)
    assert attn.layer(0).label == "layer 0 of 0..1 (block 2)"
    attn.expect(layer=0).depends_on_weights(blocks=2, at_least=0.0)
    assert attn.record.randomised["label"] == "blocks 1..3 of 0..3 re-initialised (seed 0)"
    with pytest.raises(AttentionValueError, match=r"layer 0 \(block 2\) has only 3 block"):
        attn.expect(layer=0).depends_on_weights(blocks=4)
    crossvit = timm.create_model("crossvit_tiny_240", pretrained=False)
    assert describe(crossvit).layer_blocks is None
