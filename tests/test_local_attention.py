"""scripts/local_attention.py: blocks before the last that attend locally, in training
(train_embedded.py --faithful-local-blocks) and in scoring (evaluate_embedded.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import evaluate_embedded as evaluation
import local_attention
from evaluate_embedded import to_model_input

from pytest_vitattn import zoo
from pytest_vitattn.synthetic import make_batch


def _random_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(zoo.FAITHFUL_MODEL, pretrained=False)


def test_local_attention_bias_lets_patches_read_their_neighbours_and_prefix_tokens_themselves():
    bias = local_attention.local_attention_bias((3, 3), num_prefix_tokens=1, radius=1)
    allowed = bias == 0
    assert bias.shape == (10, 10) and set(bias.unique().tolist()) == {0.0, float("-inf")}
    assert allowed[0].tolist() == [True] + [False] * 9  # the CLS token reads only itself
    assert not allowed[1:, 0].any()  # no patch reads it
    # Patch (0, 0) reads (0, 0), (0, 1), (1, 0), (1, 1); the centre patch reads all nine.
    assert allowed[1, 1:].view(3, 3).tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    assert allowed[5, 1:].all()


def test_local_blocks_keep_the_class_from_the_cls_token_until_the_last_block():
    model = _random_model()
    model.eval()
    local_attention.attend_locally_before_last(model, radius=0)
    images = to_model_input(make_batch(range(4), split="val", shortcut=False)[0], model)
    entering = []
    model.blocks[-1].register_forward_pre_hook(lambda _b, inputs: entering.append(inputs[0]))
    with torch.no_grad():
        model.forward_features(images)
        x = model.norm_pre(model._pos_embed(model.patch_embed(images)))
        tokens = x.clone()
        # With radius 0 every block before the last maps each token on its own: changing the
        # other tokens changes neither the CLS token nor a patch.
        shuffled = torch.cat([x[:, :1], x[:, 1:].flip(1)], dim=1)
        for block in model.blocks[:-1]:
            x = block(x)
            shuffled = block(shuffled)
    torch.testing.assert_close(entering[0], x)
    torch.testing.assert_close(shuffled[:, 0], x[:, 0])
    torch.testing.assert_close(shuffled[:, 1:].flip(1), x[:, 1:])
    # Without the mask the blocks mix: the same shuffle moves the CLS token.
    plain = _random_model()
    with torch.no_grad():
        y, y_shuffled = tokens, torch.cat([tokens[:, :1], tokens[:, 1:].flip(1)], dim=1)
        for block in plain.blocks[:-1]:
            y, y_shuffled = block(y), block(y_shuffled)
    assert not torch.allclose(y_shuffled[:, 0], y[:, 0])


def test_the_evaluation_scores_the_local_model_with_its_mask(monkeypatch):
    monkeypatch.setitem(evaluation.LOCAL_RADIUS, zoo.FAITHFUL_MODEL, 0)
    model = evaluation.load_model(zoo.FAITHFUL_MODEL).eval()
    images = to_model_input(make_batch(range(2), split="val", shortcut=False)[0], model)
    with evaluation.recorded_attention(model) as recorded, torch.no_grad():
        model(images)
    first, last = recorded[0], recorded[-1]  # each (B, heads, N, N)
    # Before the last block the CLS token reads only itself and each patch only itself.
    torch.testing.assert_close(first[:, :, 0, 0], torch.ones_like(first[:, :, 0, 0]))
    torch.testing.assert_close(
        first.diagonal(dim1=-2, dim2=-1), torch.ones(first.shape[:2] + first.shape[-1:])
    )
    # The last block reads every patch.
    assert (last[:, :, 0, 1:] > 0).all()


@pytest.mark.parametrize("script", ["evaluate_embedded", "background_probe"])
def test_a_radius_the_weights_were_not_trained_with_is_refused(script, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--faithful-local-blocks", "0"])  # the packaged weights have none
    assert exit_info.value.code == 2
    assert "trained with --faithful-local-blocks -1" in capsys.readouterr().err
    assert zoo.FAITHFUL_MODEL not in evaluation.LOCAL_RADIUS
