"""Pure map operations on hand-built attention tensors with known answers."""

from __future__ import annotations

import pytest
import torch

from pytest_vitattn.errors import AttentionValueError
from pytest_vitattn.maps import fuse_heads, patch_maps, prefix_share, rollout_step, upsample


def test_patch_maps_drops_prefix_columns_and_renormalises():
    # 2 prefix tokens then a 2x3 grid; the prefix tokens hold half the row.
    row = torch.tensor([0.3, 0.2, 0.05, 0.1, 0.15, 0.05, 0.1, 0.05])
    maps = patch_maps(row, num_prefix_tokens=2, grid=(2, 3))
    expected = torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.1]])
    assert maps.shape == (2, 3)
    torch.testing.assert_close(maps, expected)
    assert prefix_share(row, 2).item() == pytest.approx(0.5)


def test_patch_maps_keeps_row_major_grid_order_for_non_square_grids():
    row = torch.cat([torch.tensor([0.0]), torch.arange(1.0, 7.0)])
    maps = patch_maps(row, num_prefix_tokens=1, grid=(3, 2))
    assert maps[0, 1] / maps[0, 0] == pytest.approx(2.0)
    assert maps[2, 1] / maps[0, 0] == pytest.approx(6.0)


def test_patch_maps_rejects_a_layout_that_does_not_fit():
    with pytest.raises(AttentionValueError, match=r"197 keys, but 1 prefix tokens and a 13x13"):
        patch_maps(torch.rand(197), num_prefix_tokens=1, grid=(13, 13))


def test_patch_maps_rejects_nan():
    row = torch.tensor([0.5, float("nan"), 0.25, 0.25, 0.0])
    with pytest.raises(AttentionValueError, match="NaN or infinite"):
        patch_maps(row, num_prefix_tokens=1, grid=(2, 2))


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("mean", [[0.4, 0.1], [0.1, 0.4]]),
        ("max", [[0.7 / 1.6, 0.1 / 1.6], [0.1 / 1.6, 0.7 / 1.6]]),
    ],
)
def test_fuse_heads(how, expected):
    heads = torch.tensor([[[0.7, 0.1], [0.1, 0.1]], [[0.1, 0.1], [0.1, 0.7]]])
    torch.testing.assert_close(fuse_heads(heads, how, dim=0), torch.tensor(expected))


def test_fuse_heads_min_is_renormalised():
    heads = torch.tensor([[[0.4, 0.6]], [[0.2, 0.8]]])
    fused = fuse_heads(heads, "min", dim=0)
    torch.testing.assert_close(fused, torch.tensor([[0.2 / 0.8, 0.6 / 0.8]]))


def test_rollout_of_one_layer_is_half_attention_half_identity():
    attention = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # (B=1, H=1, 2, 2)
    rolled = rollout_step(None, attention)
    torch.testing.assert_close(rolled, torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))


def test_rollout_multiplies_later_layers_on_the_left():
    first = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]])
    second = torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]])
    eye = torch.eye(3)
    expected = (0.5 * second[0, 0] + 0.5 * eye) @ (0.5 * first[0, 0] + 0.5 * eye)
    rolled = rollout_step(rollout_step(None, first), second)
    torch.testing.assert_close(rolled[0], expected)
    torch.testing.assert_close(rolled.sum(-1), torch.ones(1, 3))


def test_rollout_fuses_heads_before_adding_the_identity():
    heads = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])  # (1, 2, 2, 2)
    rolled = rollout_step(None, heads, head_fusion="mean")
    torch.testing.assert_close(rolled[0], torch.tensor([[0.75, 0.25], [0.25, 0.75]]))


def test_upsample_keeps_a_constant_map_constant_and_has_pixel_size():
    up = upsample(torch.full((2, 3), 0.25), (32, 48))
    assert up.shape == (32, 48)
    torch.testing.assert_close(up, torch.full((32, 48), 0.25))


def test_patch_maps_names_the_layers_and_heads_whose_cls_row_reads_no_patch():
    rows = torch.rand(6, 3, 5)
    rows[:5, :, 1:] = 0.0  # layers 0-4: every head keeps all its attention on the CLS token
    rows[5, 1, 1:] = 0.0  # and one head of the last layer
    with pytest.raises(AttentionValueError) as error:
        patch_maps(rows, num_prefix_tokens=1, grid=(2, 2))
    assert "the CLS row of layers 0-4 (every head); layer 5, head 1 puts all" in str(error.value)
    assert "none on any patch" in str(error.value)
