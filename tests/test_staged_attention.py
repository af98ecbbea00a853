"""The data model of a model whose grid and heads change between layers (PiT), without pytest
plugins: per-layer maps, masks reduced to each checked layer's own grid, clear errors where a
single stack is asked for, records and baselines that keep every layer's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_vitattn import baseline, metrics
from pytest_vitattn.errors import AttentionValueError, BaselineError
from pytest_vitattn.models import ModelSpec, load_model
from pytest_vitattn.probe import Probe
from pytest_vitattn.records import AttentionRecord

GRIDS = ((27, 27),) * 2 + ((14, 14),) * 6 + ((7, 7),) * 4
HEADS = (2,) * 2 + (4,) * 6 + (8,) * 4


@pytest.fixture(scope="module")
def pit():
    torch.manual_seed(0)
    return Probe(load_model(ModelSpec("pit_ti_224", weights="random")), rollout=None)


@pytest.fixture
def object_mask() -> np.ndarray:
    """A 224x224 mask whose cover of each 16- and 32-pixel cell is worked out by hand below:
    rows 32..95 (4 cells of 16, 2 of 32), columns 40..119 (16-cells 2.5..7.5)."""
    mask = np.zeros((224, 224), dtype=bool)
    mask[32:96, 40:120] = True
    return mask


def test_each_layer_has_its_own_grid_and_heads(pit, photo):
    attn = pit(photo.resize((224, 224)))
    assert attn.ragged and attn.num_layers == 12
    assert attn.grids == GRIDS and attn.heads_per_layer == HEADS
    for layer_maps, grid, heads in zip(attn.layer_maps, GRIDS, HEADS, strict=True):
        assert tuple(layer_maps.shape) == (heads, *grid)
        torch.testing.assert_close(layer_maps.sum(dim=(-2, -1)), torch.ones(heads))
    assert attn.layer(-1).mean_heads().grid.shape == (7, 7)
    assert [float(s.sum()) > 0 for s in attn.prefix_share] == [True] * 12


@pytest.mark.parametrize("what", ["maps", "grid", "num_heads"])
def test_a_single_stack_is_refused_naming_the_grids(pit, photo, what):
    attn = pit(photo.resize((224, 224)))
    with pytest.raises(AttentionValueError) as error:
        getattr(attn, what)
    message = str(error.value)
    assert "27x27 (layers 0-1), 14x14 (layers 2-7), 7x7 (layers 8-11)" in message
    assert "2/4/8 heads" in message and "attn.layer_maps[i]" in message


def test_masks_are_reduced_to_each_checked_layers_grid(pit, photo, object_mask):
    attn = pit(photo.resize((224, 224)))
    # By hand: 16-pixel cells (14x14) rows 2-5 fully covered, columns 2 and 7 half, 3-6 full.
    by_hand_14 = np.zeros((14, 14), np.float32)
    by_hand_14[2:6, 3:7] = 1.0
    by_hand_14[2:6, [2, 7]] = 0.5
    # 32-pixel cells (7x7): rows 1-2 full; columns 1 (40..63: 24/32), 2 (64..95: 1),
    # 3 (96..119: 24/32).
    by_hand_7 = np.zeros((7, 7), np.float32)
    by_hand_7[1:3, [1, 3]] = 0.75
    by_hand_7[1:3, 2] = 1.0
    for layer, by_hand in ((2, by_hand_14), (-1, by_hand_7)):
        selected = attn.layer(layer).mean_heads()
        grid = selected.resolve_mask(object_mask).grid.numpy()
        np.testing.assert_allclose(grid, by_hand, atol=1e-6)
        expected = float((selected.grid.numpy() * by_hand).sum())
        assert selected.mass_in(object_mask) == pytest.approx(expected, abs=1e-6)
        chance = float(by_hand.mean())
        assert metrics.chance_level(torch.from_numpy(by_hand)) == pytest.approx(chance)
    # 27x27 cells are not whole pixels: the area is still kept exactly.
    first = attn.layer(0).head(1).resolve_mask(object_mask).grid.numpy()
    assert first.shape == (27, 27)
    assert float(first.mean()) == pytest.approx(float(object_mask.mean()), abs=1e-6)
    # One mask, one label and one record entry, however many grids it was reduced to.
    assert [mask.label for mask in attn.record.masks] == ["mask[0]"]


def test_checks_on_any_layer_judge_that_layers_map(pit, photo, object_mask):
    attn = pit(photo.resize((224, 224)))
    value = attn.layer(5).head(3).pointing_game(object_mask)
    peak = divmod(int(attn.layer_maps[5][3].argmax()), 14)
    covered = attn.layer(5).head(3).resolve_mask(object_mask).grid[peak]
    assert value == bool(covered > 0)
    with pytest.raises(AssertionError, match=r"selection: layer 8 of 0\.\.11, head 7"):
        attn.expect(layer=8, head=7).mass_in(object_mask, at_least=0.999)
    top = attn.expect(layer=-1).top_k_iou(object_mask, at_most=1.0)
    assert 0.0 <= top <= 1.0


def test_records_and_baseline_files_keep_every_layers_shape(pit, photo, tmp_path):
    attn = pit(photo.resize((224, 224)))
    data = attn.record.to_dict()
    assert data["grid"] is None and data["layer_grids"] == [list(g) for g in GRIDS]
    back = AttentionRecord.from_dict(data)
    assert [m.shape for m in back.maps] == [(h, *g) for h, g in zip(HEADS, GRIDS, strict=True)]
    for got, original in zip(back.maps, attn.layer_maps, strict=True):
        np.testing.assert_allclose(got, original.numpy(), atol=1e-3)  # float16 in JSON
    assert [len(s) for s in back.prefix_share] == list(HEADS)

    metadata = baseline.describe(attn.record, "test_x", "image-abc")
    assert metadata["format_version"] == 3 and metadata["token_layout"]["grid"] is None
    stored = baseline.stored_values(attn.record.maps)
    path = tmp_path / "b.safetensors"
    baseline.write(path, baseline.encode(stored, metadata))
    read = baseline.read(path)
    assert [m.shape for m in read.maps] == [m.shape for m in stored]
    for got, expected in zip(read.maps, stored, strict=True):
        np.testing.assert_array_equal(got, expected)
    # Metadata that cuts the flat tensor elsewhere makes a corrupt file, never a map.
    header = path.read_bytes().replace(b"[[2,27,27]", b"[[4,27,27]", 1)
    assert header != path.read_bytes()
    path.write_bytes(header)
    with pytest.raises(BaselineError, match="corrupt: it has no flat float16 tensor"):
        baseline.read(path)


def test_show_writes_per_layer_rows_and_arrays(tmp_path, photo):
    from PIL import Image

    from pytest_vitattn.errors import VitAttnError
    from pytest_vitattn.show import CELL_PIXELS, GAP_PIXELS, show

    photo.save(tmp_path / "photo.png")
    kwargs = {"model": "pit_ti_224", "weights": "random", "rollout": None}
    show(tmp_path / "photo.png", tmp_path / "grid.png", **kwargs)
    # Rows at their own scale: 27x27 at 4 px, 14x14 at 7 px, 7x7 at 14 px per patch (about
    # CELL_PIXELS each), the widest row the last: image + 8 heads + mean.
    scales = [round(CELL_PIXELS / size) for size in (27, 14, 7)]
    heights = [27 * scales[0]] * 2 + [14 * scales[1]] * 6 + [7 * scales[2]] * 4
    width = 10 * (7 * scales[2] + GAP_PIXELS) - GAP_PIXELS
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (width, sum(heights) + GAP_PIXELS * 11)
    show(tmp_path / "photo.png", tmp_path / "maps.npz", **kwargs)
    arrays = np.load(tmp_path / "maps.npz")
    assert [arrays[f"maps_{i}"].shape for i in range(12)] == [
        (h, *g) for h, g in zip(HEADS, GRIDS, strict=True)
    ]
    with pytest.raises(VitAttnError, match=r"one \.npy array cannot hold; use \.npz"):
        show(tmp_path / "photo.png", tmp_path / "maps.npy", **kwargs)
