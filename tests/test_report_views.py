"""The report's parts on their own: colour encoding, sprites, outlines, view models, page."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_vitattn.records import AttentionRecord, CheckResult, MaskRecord, anchor
from pytest_vitattn.report import heatmaps
from pytest_vitattn.report.html import render_page, template_dirs
from pytest_vitattn.report.run_info import RunInfo, installed_versions
from pytest_vitattn.report.views import ReportView, record_view, sort_records


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_a_map_is_one_pixel_per_patch_coloured_from_its_minimum_to_its_maximum():
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 66.0
    image = decoded(heatmaps.heatmap_png(values))
    assert (image.mode, image.size) == ("P", (4, 3))
    rgb = np.asarray(image.convert("RGB"))
    lut = np.frombuffer(heatmaps.palette("viridis"), np.uint8).reshape(-1, 3)
    assert (rgb[0, 0] == lut[0]).all() and (rgb[2, 3] == lut[-1]).all()
    # Brighter is more attention: viridis' luminance grows along the row.
    assert (np.diff(rgb[1].astype(int).sum(axis=-1)) > 0).all()


def test_a_flat_map_is_one_colour_not_a_division_by_zero():
    image = decoded(heatmaps.heatmap_png(np.full((2, 2), 0.25, np.float32)))
    assert np.unique(np.asarray(image)).tolist() == [0]


def test_differences_are_red_where_attention_grew_and_blue_where_it_shrank():
    rgb = np.asarray(
        decoded(heatmaps.difference_png(np.array([[0.2, -0.2, 0.0]], np.float32))).convert("RGB")
    ).astype(int)
    grew, shrank, same = rgb[0]
    assert grew[0] > grew[2] and shrank[2] > shrank[0]
    assert abs(same[0] - same[2]) < 20  # the middle of RdBu is grey-white


def test_the_sprite_holds_each_map_where_its_cell_points():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 3, 4, 5)).astype(np.float32)
    sprite = np.asarray(decoded(heatmaps.sprite_png(maps, gap=1)))
    assert sprite.shape == (2 * 5 - 1, 3 * 6 - 1)
    for row in range(2):
        for column in range(3):
            window = sprite[row * 5 : row * 5 + 4, column * 6 : column * 6 + 5]
            alone = np.asarray(decoded(heatmaps.heatmap_png(maps[row, column])))
            assert (window == alone).all()
    # Gaps are the transparent extra palette entry.
    assert (sprite[4, :] == heatmaps.LEVELS).all()


def test_a_mask_outline_is_a_light_line_between_dark_halos_and_clear_elsewhere():
    mask = np.zeros((20, 20), bool)
    mask[6:14, 5:15] = True
    rgba = np.asarray(decoded(heatmaps.outline_png(mask)).convert("RGBA")).astype(int)
    # The line is two pixels wide on the boundary: the mask's edge row and the row outside.
    line = (rgba[..., :3] == heatmaps.OUTLINE_COLOURS[0]).all(-1) & (rgba[..., 3] == 255)
    halo = (rgba[..., :3] == 0).all(-1) & (rgba[..., 3] == heatmaps.HALO[3])
    assert line[6, 5:15].all() and line[5, 6:14].all() and not line[7, 7:13].any()
    assert halo[4, 6:14].all() and halo[3, 6:14].all()  # two halo pixels outside
    assert halo[7, 7:13].all() and halo[8, 7:13].all()  # and two inside
    assert not halo[10, 8:12].any() and (rgba[10, 8:12, 3] == 0).all()  # the inside is clear
    assert (rgba[0, :, 3] == 0).all()  # and so is the far outside


def contrast(first, second) -> float:
    """WCAG 2 contrast ratio of two sRGB colours (0..255)."""

    def luminance(colour):
        channels = np.asarray(colour[:3], float) / 255
        linear = np.where(
            channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4
        )
        return float(linear @ [0.2126, 0.7152, 0.0722])

    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize(
    "background", [(255, 0, 0), (0, 0, 0), (255, 255, 255), (0, 128, 0), (128, 128, 128)]
)
def test_every_outline_colour_or_its_halo_stands_out_on_any_background(background):
    halo_alpha = heatmaps.HALO[3] / 255
    halo = [round(halo_alpha * 0 + (1 - halo_alpha) * c) for c in background]
    for colour in heatmaps.OUTLINE_COLOURS:
        assert contrast(colour, halo) >= 7  # the line on its own halo: always legible
        assert max(contrast(colour, background), contrast(halo, background)) >= 3


def test_the_shared_scale_is_in_multiples_of_uniform_attention():
    uniform = np.full((14, 14), 1 / 196, np.float32)
    peaked = np.full((14, 14), 0.0, np.float32)
    peaked[3, 4] = 1.0
    low, high = heatmaps.SHARED_LOG2_RANGE
    one_x = round((0 - low) / (high - low) * (heatmaps.LEVELS - 1))
    assert np.unique(heatmaps.shared_levels(uniform)).tolist() == [one_x]
    levels = heatmaps.shared_levels(peaked)
    assert levels[3, 4] == heatmaps.LEVELS - 1 and levels[0, 0] == 0
    # Per-map scaling makes the near-uniform head of the issue look as vivid as a peak;
    # the shared scale keeps it within 1/2x..2x of uniform (the middle of the bar).
    near = np.random.default_rng(0).uniform(0.0098, 0.0177, (8, 8)).astype(np.float32)
    near /= near.sum()
    own, shared = heatmaps.levels_for(near, "own"), heatmaps.levels_for(near, "shared")
    assert own.min() == 0 and own.max() == heatmaps.LEVELS - 1
    half, double = (round((p - low) / (high - low) * (heatmaps.LEVELS - 1)) for p in (-1, 1))
    assert half <= shared.min() and shared.max() <= double


def test_the_overlay_is_clear_at_uniform_and_opaque_where_attention_piles_up():
    alpha = np.frombuffer(heatmaps.overlay_alpha(), np.uint8)
    low, high = heatmaps.SHARED_LOG2_RANGE
    index = lambda log2: round((log2 - low) / (high - low) * (heatmaps.LEVELS - 1))  # noqa: E731
    assert alpha[: index(0) + 1].max() == 0
    assert alpha[index(3)] == round(255 * heatmaps.OVERLAY_MAX_ALPHA) == alpha[-1]
    assert (np.diff(alpha.astype(int)) >= 0).all()


def test_small_photos_use_the_smaller_of_png_and_jpeg_large_ones_jpeg():
    flat = np.full((64, 64, 3), 120, np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    assert heatmaps.photo_bytes(flat)[1] == "image/png"
    assert heatmaps.photo_bytes(noisy)[1] == "image/jpeg"
    assert heatmaps.photo_bytes(np.full((224, 224, 3), 120, np.uint8))[1] == "image/jpeg"


def make_record(record_id: str, outcome: str, line: int, checks=()) -> dict:
    rng = np.random.default_rng(line)
    maps = rng.dirichlet(np.ones(16), size=(2, 3)).reshape(2, 3, 4, 4).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    return AttentionRecord(
        record_id=record_id,
        nodeid=record_id.rsplit("::", 1)[0],
        location=("tests/test_x.py", line),
        image_label=record_id.rsplit("::", 1)[1],
        model={"name": "tiny", "weights": "random", "weights_id": "random-init", "device": "cpu"},
        preprocessing={"input_size": [3, 32, 32]},
        method="fast",
        num_prefix_tokens=1,
        query_index=0,
        image=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        maps=maps,
        rollout=maps.mean(axis=1),
        prefix_share=np.full((2, 3), 0.25, np.float32),
        masks=[MaskRecord("mask.png", np.zeros((4, 4), np.float32), mask)],
        checks=list(checks),
        outcome=outcome,
    ).to_dict()


def test_records_are_ordered_failures_first_then_by_source_line():
    records = [
        make_record("t.py::test_b::a.png", "passed", 5),
        make_record("t.py::test_c::a.png", "xfailed", 9),
        make_record("t.py::test_d::a.png", "failed", 20),
        make_record("t.py::test_a::a.png", "failed", 2),
    ]
    assert [r["record_id"].split("::")[1] for r in sort_records(records)] == [
        "test_a",
        "test_d",
        "test_c",
        "test_b",
    ]


def test_a_check_reads_as_value_expected_and_chance():
    check = CheckResult(
        "mass_in_mask",
        0.4321,
        False,
        ">=",
        0.6,
        0.25,
        "layer 1 of 0..1, mean of 3 heads",
        "mask.png",
        "it failed",
        details={"per_layer": [0.1, 0.2], "table": [{"nested": 1}], "note": "kept"},
    )
    record = make_record("t.py::test_a::a.png", "failed", 3, [check])
    (view,) = record_view(record, 0, Path("/root"), Path("/root/out")).checks
    assert (view.status_text, view.value, view.expected, view.chance) == (
        "FAIL",
        "0.432",
        "≥ 0.600",
        "0.250",
    )
    assert view.details == "per_layer: [0.1, 0.2]; note: kept"


def test_the_grid_shows_every_head_the_head_mean_and_rollout_from_one_sprite():
    record = make_record("t.py::test_a::a.png", "passed", 3)
    view = record_view(record, 0, Path("/root"), Path("/root/out"))
    assert view.grid.columns == ["head 0", "head 1", "head 2", "head mean", "rollout"]
    assert [row.label for row in view.grid.rows] == ["layer 0", "layer 1"]
    assert view.sheet_style.startswith("--sprite: url(data:image/png;base64,")
    # Cells are 4 x 4 patches at zoom 12 (48 px); the sprite's pitch is 5 px.
    assert view.grid.rows[1].cells[3].position == "background-position: -180px -60px"
    assert view.location.href == "../tests/test_x.py#L3"


@pytest.mark.parametrize(
    ("status", "passed", "badge"),
    [("compared", False, True), ("compared", True, False), ("written", False, False)],
)
def test_only_a_failed_comparison_is_marked_drifted(status, passed, badge):
    """A missing baseline is written and fails its test, but nothing drifted."""
    check = CheckResult(
        "baseline",
        0.0,
        passed,
        "<=",
        0.02,
        None,
        "every layer and head",
        None,
        "",
        details={"status": status},
    )
    record = make_record("t.py::test_a::a.png", "failed", 3, [check])
    record["baseline"] = {"maps": record["maps"], "path": "b.safetensors", "status": status}
    view = record_view(record, 0, Path("/root"), Path("/root/out"))
    assert view.baseline.drifted is badge
    assert view.baseline.note.startswith(status)


def test_the_page_renders_every_record_with_its_anchor_and_run_facts(tmp_path):
    records = [make_record(f"t.py::test_{i}::a.png", "passed", i) for i in range(3)]
    run = RunInfo("pytest -q", "2030-01-01T00:00:00+00:00", str(tmp_path), installed_versions())
    page = render_page(ReportView.build(records, run, tmp_path))
    for record in records:
        assert f'id="{anchor(record["record_id"])}"' in page
    assert "<code>pytest -q</code>" in page
    # One CSS rule per overlay slot (7 choices and the clicked-map slot) and per filter.
    assert page.count(":checked ~ .stage .layers > :nth-child(") == 8
    assert ".filters:has(#filter-status-passed:not(:checked)) ~ main .record.status-passed" in page


def test_templates_are_found_in_the_package_or_at_the_repository_top():
    directories = template_dirs()
    assert directories
    assert all((directory / "report.html").is_file() for directory in directories)


@pytest.mark.parametrize("name", ["report.html", "record.html", "grid.html"])
def test_templates_use_no_external_resources(name):
    text = (template_dirs()[0] / name).read_text()
    assert "http://" not in text and "https://" not in text and '<link rel="stylesheet"' not in text


def test_the_overlay_filter_gives_each_palette_colour_its_opacity():
    table = np.asarray(heatmaps.opacity_table())
    luma = heatmaps.luma()
    # What the page's SVG filter does: alpha = luma, then the table (linear in between).
    opacity = np.interp(luma, np.linspace(0, 1, len(table)), table)
    wanted = np.frombuffer(heatmaps.overlay_alpha(), np.uint8) / 255
    assert np.abs(opacity - wanted).max() < 0.03
    low, high = heatmaps.SHARED_LOG2_RANGE
    uniform = round((0 - low) / (high - low) * (heatmaps.LEVELS - 1))
    # Clear at and below 1x uniform: under one step of an 8-bit alpha channel.
    assert opacity[: uniform + 1].max() * 255 < 1


def test_a_grid_can_hold_layers_whose_maps_differ_in_size():
    """Multi-stage models (PiT: 27x27, then 14x14, then 7x7 patches) give one grid whose
    rows have their own map size; every cell still points at its own map in the sprite."""
    from pytest_vitattn.report.views import grid_view

    rng = np.random.default_rng(3)
    layers = [rng.random((2, size, size)).astype(np.float32) for size in (27, 14, 7)]
    layers = [maps / maps.sum(axis=(-2, -1), keepdims=True) for maps in layers]
    sheets, grid = grid_view(layers, None, np.zeros((0,), np.float32))
    sheet = sheets["shared"]
    sprite = np.asarray(decoded(heatmaps.data_uri_bytes(sheet.src)))
    assert sheet.tops == [0, 28, 43] and sheet.sizes == [(27, 27), (14, 14), (7, 7)]
    for row, maps in zip(grid.rows, layers, strict=True):
        size = maps.shape[-1]
        zoom = max(1, round(48 / size))
        # Each row sets its own cell size: about 48 px whatever the layer's map size.
        assert f"--cell-w: {size * zoom}px" in row.style
        columns = [*maps, maps.mean(axis=0)]  # heads, then the head mean
        for cell, values in zip(row.cells, columns, strict=True):
            x, y = (int(-float(v[:-2])) // zoom for v in cell.position.split(": ")[1].split())
            window = sprite[y : y + size, x : x + size]
            assert (window == heatmaps.shared_levels(values)).all()
