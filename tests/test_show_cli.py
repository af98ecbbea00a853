"""``vitattn show``: the reference notebook's figure as one command, checked against the
notebook's own method (torch.fx on ``attn_drop``, ``out[k][0, head, 0, 1:]``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
from torchvision.transforms import InterpolationMode

from pytest_vitattn.report.heatmaps import LEVELS, palette, to_levels
from pytest_vitattn.show import render_grid_png

VITATTN = Path(sys.executable).with_name("vitattn")


def notebook_maps(
    model, image: Image.Image, size: int, mean, std, interpolation="bilinear"
) -> np.ndarray:
    """The notebook, step by step: fused attention off, fx on attn_drop, CLS row reshaped.

    The notebook resizes bilinearly (``transforms.Resize((224, 224))``); the plugin resizes
    with the model's own interpolation, bilinear for the shipped models, bicubic for deit.

    Returns:
        (layers, heads, grid, grid) raw CLS attention over the patches (not renormalised).
    """
    for block in model.blocks:
        block.attn.fused_attn = False
    nodes, _ = get_graph_node_names(model)
    interesting_nodes = [x for x in nodes if "attn_drop" in x]
    preprocess = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=InterpolationMode(interpolation)),
            transforms.ToTensor(),
            transforms.Normalize(mean=mean, std=std),
        ]
    )
    img_tensor = preprocess(image).unsqueeze(0)
    feature_extractor = create_feature_extractor(model, return_nodes=interesting_nodes)
    with torch.no_grad():
        out = feature_extractor(img_tensor)
    grid = size // model.patch_embed.patch_size[0]
    layers = []
    for _, v in out.items():
        attn_scores = v.squeeze()
        layers.append(
            [attn_scores[head][0, 1:].reshape(grid, grid).numpy() for head in range(v.shape[1])]
        )
    return np.array(layers)


def run_show(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(VITATTN), "show", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def rendered_levels(png: Path, maps: np.ndarray, rollout: bool) -> np.ndarray:
    """Colour levels of every patch of the grid PNG, (layers, heads, grid_h, grid_w)."""
    _, layout = render_grid_png(maps, maps[:, 0] if rollout else None, np.zeros((8, 8, 3)))
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    colours = np.frombuffer(palette("viridis"), dtype=np.uint8).reshape(LEVELS, 3).astype(int)
    layers, heads, grid_h, grid_w = maps.shape
    levels = np.zeros(maps.shape, dtype=int)
    for layer in range(layers):
        for head in range(heads):
            top = layer * layout.step_y
            left = layout.left + head * layout.step_x
            for row in range(grid_h):
                for column in range(grid_w):
                    y = top + row * layout.scale + layout.scale // 2
                    x = left + column * layout.scale + layout.scale // 2
                    distance = np.abs(colours - pixels[y, x]).sum(axis=1)
                    assert distance.min() == 0, (layer, head, row, column)
                    levels[layer, head, row, column] = int(distance.argmin())
    return levels


def expected_levels(notebook: np.ndarray) -> np.ndarray:
    """What imshow's per-map min..max scaling gives, at the report's colour levels."""
    return np.array(
        [[to_levels(m, float(m.min()), float(m.max())) for m in layer] for layer in notebook]
    ).astype(int)


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(7)
    pixels = (rng.random((300, 400, 3)) * 120).astype(np.uint8)
    pixels[100:200, 150:250] = (250, 200, 40)
    path = tmp_path_factory.mktemp("img") / "bird.png"
    Image.fromarray(pixels).save(path)
    return path


def test_show_reproduces_the_notebook_grid_for_deit_tiny(tmp_path, photo_file):
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    weights = tmp_path / "deit_tiny_random.safetensors"
    save_file(model.state_dict(), str(weights))
    common = ["--model", "deit_tiny_patch16_224", "--weights", weights]
    shown = run_show(photo_file, *common, "--scale", "own", "--out", "grid.png", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == (
        "vitattn: 12 layers x 3 heads of deit_tiny_patch16_224 on bird.png (14x14 patches): "
        "grid.png"
    )
    arrays = run_show(photo_file, *common, "--out", "maps.npz", cwd=tmp_path)
    assert arrays.returncode == 0, arrays.stderr

    notebook = notebook_maps(
        model,
        Image.open(photo_file).convert("RGB"),
        224,
        [0.485, 0.456, 0.406],
        [0.229, 0.224, 0.225],
        interpolation=model.pretrained_cfg["interpolation"],
    )
    assert notebook.shape == (12, 3, 14, 14)  # the notebook's 12 x 3 grid
    with np.load(tmp_path / "maps.npz") as saved:
        maps, rollout = saved["maps"], saved["rollout"]
    renormalised = notebook / notebook.sum(axis=(-2, -1), keepdims=True)
    np.testing.assert_allclose(maps, renormalised, rtol=0, atol=1e-6)
    assert rollout.shape == (12, 14, 14)

    rendered = rendered_levels(tmp_path / "grid.png", maps, rollout=True)
    expected = expected_levels(notebook)
    # imshow's colours, quantised: equal except where float noise crosses a level boundary
    assert np.abs(rendered - expected).max() <= 1
    assert (rendered == expected).mean() > 0.99


def test_show_reproduces_the_notebook_grid_for_the_shipped_model(tmp_path, photo_file):
    """The shipped model's blocks 0-4 are local: their mask keeps the CLS token from every
    patch, so the notebook's CLS rows there are all 0 and the plugin reads only block 5, as
    one layer (and without rollout, which it refuses for such models)."""
    from pytest_vitattn import zoo

    model = timm.create_model(zoo.FAITHFUL_MODEL, pretrained=True).eval()
    shown = run_show(
        photo_file, "--model", zoo.FAITHFUL_MODEL, "--scale", "own", "--out", "g.png", cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert "vitattn: 1 layer (block 5) x 3 heads of vitattn_tiny_shapes" in shown.stdout
    assert "no rollout column: rollout is not defined for vitattn_tiny_shapes" in shown.stdout
    run_show(photo_file, "--model", zoo.FAITHFUL_MODEL, "--out", "maps.npy", cwd=tmp_path)
    every_block = notebook_maps(model, Image.open(photo_file).convert("RGB"), 64, zoo.MEAN, zoo.STD)
    assert every_block.shape == (6, 3, 8, 8)  # the notebook reads every block
    reads_patches = every_block.sum(axis=(-2, -1)) > 0  # (blocks, heads)
    assert reads_patches.tolist() == [[False] * 3] * 5 + [[True] * 3]
    notebook = every_block[5:]  # the one block whose CLS token reads the patches
    maps = np.load(tmp_path / "maps.npy")
    assert maps.shape == notebook.shape == (1, 3, 8, 8)
    renormalised = notebook / notebook.sum(axis=(-2, -1), keepdims=True)
    # rtol as well: this model's maps reach 0.6 in a patch, where float32 kernels that sum
    # in another order (fused attention against the notebook's explicit softmax) differ by
    # about 1e-6 (2e-6 relative); a wrong map is off by orders of magnitude more.
    np.testing.assert_allclose(maps, renormalised, rtol=1e-5, atol=1e-6)
    rendered = rendered_levels(tmp_path / "g.png", maps, rollout=False)
    expected = expected_levels(notebook)
    assert np.abs(rendered - expected).max() <= 1
    assert (rendered == expected).mean() > 0.99


def test_show_writes_the_report_page_for_one_image(tmp_path, photo_file):
    shown = run_show(photo_file, "--out", "out/report.html", "--rollout", "none", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (record,) = results["records"]
    assert record["model"]["name"] == "vitattn_tiny_shapes"
    assert record["rollout"] is None
    assert "<html" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png"], "vitattn: image file not found"),
        (["{photo}", "--out", "grid.gif"], "the suffix must be one of .png, .html, .npy, .npz"),
        (["{photo}", "--model", "resnet18", "--weights", "random"], "vitattn: "),
    ],
)
def test_show_errors_are_one_line_without_a_traceback(tmp_path, photo_file, args, message):
    shown = run_show(*[arg.format(photo=photo_file) for arg in args], cwd=tmp_path)
    assert shown.returncode == 2
    assert message in shown.stderr
    assert "Traceback" not in shown.stderr


def test_show_checks_its_options_with_the_plugins_parsers(tmp_path, photo_file):
    shown = run_show(photo_file, "--model-kwargs", "num_classes", cwd=tmp_path)
    assert shown.returncode == 2
    assert "'num_classes' is not KEY=VALUE" in shown.stderr


def test_show_colours_maps_on_the_reports_shared_scale_by_default(tmp_path, photo_file):
    from pytest_vitattn import zoo
    from pytest_vitattn.report.heatmaps import shared_levels

    # 6 read layers and rollout (the default model is read as one layer, without rollout).
    common = ["--model", zoo.BRIGHTNESS_MODEL]
    shown = run_show(photo_file, *common, "--out", "grid.png", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert run_show(photo_file, *common, "--out", "maps.npz", cwd=tmp_path).returncode == 0
    with np.load(tmp_path / "maps.npz") as saved:
        maps = saved["maps"]
    rendered = rendered_levels(tmp_path / "grid.png", maps, rollout=True)
    shared = np.array([[shared_levels(m) for m in layer] for layer in maps]).astype(int)
    own = expected_levels(maps)
    assert np.abs(rendered - shared).max() <= 1
    assert (rendered == shared).mean() > 0.99
    assert np.abs(rendered - own).mean() > 3  # not the per-map scaling
