"""transformers vision models (``hf:``): maps equal the model's own eager attentions, offline.

Every model here is built from a tiny config with random weights and written with
``save_pretrained`` to a temporary directory; nothing is downloaded. The references are the
model's own ``output_attentions=True`` under eager attention (what transformers users read),
and, for SigLIP's pooling head, a recomputation from the head's projection weights.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pytest_vitattn.errors import ModelLoadError, UnsupportedModelError, WeightsError  # noqa: E402
from pytest_vitattn.extract import extract_cls_attention  # noqa: E402
from pytest_vitattn.models import ModelSpec, load_model  # noqa: E402
from pytest_vitattn.probe import Probe  # noqa: E402

SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
}
# name -> (config, model class, prefix tokens the layout must have, named queries)
FAMILIES = {
    "vit": (lambda: transformers.ViTConfig(**SMALL), "ViTForImageClassification", 1),
    "deit-distilled": (
        lambda: transformers.DeiTConfig(**SMALL),
        "DeiTForImageClassificationWithTeacher",
        2,
    ),
    "dinov2": (lambda: transformers.Dinov2Config(**SMALL), "Dinov2Model", 1),
    "dinov2-registers": (
        lambda: transformers.Dinov2WithRegistersConfig(**SMALL, num_register_tokens=3),
        "Dinov2WithRegistersModel",
        4,
    ),
    "clip-vision": (lambda: transformers.CLIPVisionConfig(**SMALL), "CLIPVisionModel", 1),
}


def build(family: str):
    make_config, class_name, _ = FAMILIES[family]
    torch.manual_seed(0)
    return getattr(transformers, class_name)(make_config()).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (the original model, its save_pretrained directory)."""
    out = {}
    for family in [*FAMILIES, "siglip", "swin"]:
        model = build_other(family) if family in ("siglip", "swin") else build(family)
        directory = tmp_path_factory.mktemp(family)
        model.save_pretrained(directory)
        out[family] = (model, directory)
    return out


def build_other(family: str):
    torch.manual_seed(0)
    if family == "siglip":
        return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SMALL)).eval()
    config = transformers.SwinConfig(
        embed_dim=16, depths=[1, 1], num_heads=[1, 1], image_size=32, patch_size=4, window_size=2
    )
    return transformers.SwinModel(config).eval()


def eager_cls_rows(model, pixels, query=0):
    """(B, L, H, N): the query's rows from the model's own output_attentions=True."""
    saved_impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    kwargs = {}
    if pixels.shape[-1] != model.config.image_size and "interpolate_pos_encoding" in (
        inspect.signature(model.forward).parameters
    ):
        kwargs["interpolate_pos_encoding"] = True
    try:
        with torch.no_grad():
            attentions = model(pixel_values=pixels, output_attentions=True, **kwargs).attentions
    finally:
        model.set_attn_implementation(saved_impl)
    return torch.stack([a[:, :, query] for a in attentions], dim=1)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", ["fast", "fx"])
@pytest.mark.parametrize("size", [32, 48])  # 48: position embeddings interpolated (6x6 grid)
def test_rows_equal_the_models_own_eager_attentions(saved, family, method, size):
    original, directory = saved[family]
    loaded = load_model(ModelSpec(f"hf:{directory}"))
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    extraction = extract_cls_attention(loaded.model, pixels, method=method, rollout_fusion=None)
    assert extraction.method == method
    grid = size // SMALL["patch_size"]
    assert extraction.layout.grid == (grid, grid)
    assert extraction.layout.num_prefix_tokens == FAMILIES[family][2]
    reference = eager_cls_rows(original, pixels)  # the model before saving: weights survived
    assert reference.shape == extraction.rows.shape
    torch.testing.assert_close(extraction.rows, reference, atol=1e-6, rtol=0)


def test_distillation_and_register_rows_are_named_from_the_config(saved):
    deit = load_model(ModelSpec(f"hf:{saved['deit-distilled'][1]}"))
    assert dict(deit.anatomy.named_queries) == {"cls": 0, "dist": 1}
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    dist = extract_cls_attention(deit.model, pixels, query_index=1, rollout_fusion=None).rows
    reference = eager_cls_rows(saved["deit-distilled"][0], pixels, 1)
    torch.testing.assert_close(dist, reference, atol=1e-6, rtol=0)
    registers = load_model(ModelSpec(f"hf:{saved['dinov2-registers'][1]}"))
    assert registers.anatomy.num_prefix_tokens == 1 + 3
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for query in (1, 3):
        rows = extract_cls_attention(
            registers.model, pixels, query_index=query, rollout_fusion=None
        ).rows
        reference = eager_cls_rows(saved["dinov2-registers"][0], pixels, query)
        torch.testing.assert_close(rows, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["vit", "dinov2-registers"])
def test_random_weights_from_a_directorys_config(saved, family):
    torch.manual_seed(7)
    loaded = load_model(ModelSpec(f"hf:{saved[family][1]}", weights="random"))
    assert loaded.weights_id == "random-init"
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    rows = extract_cls_attention(loaded.model, pixels, rollout_fusion=None).rows
    torch.testing.assert_close(rows, eager_cls_rows(loaded.model.model, pixels), atol=1e-6, rtol=0)
    # Random init: not the saved weights.
    assert (rows - eager_cls_rows(saved[family][0], pixels)).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["vit", "dinov2-registers"])
def test_maps_through_the_probe_equal_eager_attention_and_rollout_is_the_formula(saved, family):
    original, directory = saved[family]
    loaded = load_model(ModelSpec(f"hf:{directory}"))
    probe = Probe(loaded, rollout="max", rollout_discard_ratio=0.5)
    image = torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(4))
    attn = probe(image)
    display, _ = probe.preprocessing.display_image(image)
    pixels = probe.preprocessing.normalise(display)[None]
    reference = eager_cls_rows(original, pixels)[0]  # (L, H, N)
    prefix = loaded.anatomy.num_prefix_tokens
    patches = reference[..., prefix:]
    expected = (patches / patches.sum(-1, keepdim=True)).reshape(*reference.shape[:2], 4, 4)
    torch.testing.assert_close(attn.maps, expected, atol=1e-6, rtol=0)
    # Rollout: max fusion, discard 0.5, from the eager full matrices (vit-explain's formula).
    original.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            full = original(pixel_values=pixels, output_attentions=True).attentions
    finally:
        original.set_attn_implementation("sdpa")
    running = torch.eye(full[0].shape[-1], dtype=torch.float64)
    for attention in full:
        fused = attention[0].double().amax(0).flatten()
        lowest = torch.sort(fused, stable=True).indices[: int(fused.numel() * 0.5)]
        fused[lowest[lowest != 0]] = 0
        a = (fused.view_as(running) + torch.eye(len(running), dtype=torch.float64)) / 2
        running = (a / a.sum(1, keepdim=True)) @ running
    last = running[0, prefix:]
    torch.testing.assert_close(
        attn.rollout(layer=-1).grid.double(),
        (last / last.sum()).reshape(4, 4),
        atol=1e-5,
        rtol=0,
    )


def test_siglip_reads_the_pooling_query_like_a_recomputation_from_its_weights(saved):
    original, directory = saved["siglip"]
    loaded = load_model(ModelSpec(f"hf:{directory}"))
    assert loaded.anatomy.family == "hf-siglip-pool" and not loaded.anatomy.has_rollout
    pixels = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    extraction = extract_cls_attention(loaded.model, pixels)
    assert extraction.method == "fx" and extraction.rollout is None
    with torch.no_grad():
        hidden = original(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
    head = original.head
    heads = head.attention.num_heads
    w_q, w_k, _ = head.attention.in_proj_weight.chunk(3)
    b_q, b_k, _ = head.attention.in_proj_bias.chunk(3)
    q = (head.probe @ w_q.T + b_q).view(1, 1, heads, -1).transpose(1, 2)
    k = (hidden @ w_k.T + b_k).view(2, hidden.shape[1], heads, -1).transpose(1, 2)
    expected = ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(-1)[:, :, 0]
    torch.testing.assert_close(extraction.rows[:, 0], expected, atol=1e-6, rtol=0)
    assert extraction.layout.grid == (6, 6) and extraction.layout.num_prefix_tokens == 0


def test_swin_is_refused_with_the_reason(saved):
    with pytest.raises(UnsupportedModelError, match=r"SwinModel .*no CLS token"):
        load_model(ModelSpec(f"hf:{saved['swin'][1]}"))


def test_loading_errors_name_the_fix(tmp_path, saved):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(ModelSpec(f"hf:{tmp_path / 'missing'}"))
    with pytest.raises(ModelLoadError, match=r"without config\.json"):
        load_model(ModelSpec(f"hf:{tmp_path}"))
    with pytest.raises(WeightsError, match="come with its directory"):
        load_model(ModelSpec(f"hf:{saved['vit'][1]}", weights=str(tmp_path / "w.safetensors")))


def test_preprocessing_comes_from_the_saved_image_processor(tmp_path, saved):
    directory = tmp_path / "vit"
    saved["vit"][0].save_pretrained(directory)
    processor = transformers.ViTImageProcessor(
        size={"height": 48, "width": 48}, image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6]
    )
    processor.save_pretrained(directory)
    loaded = load_model(ModelSpec(f"hf:{directory}"))
    assert loaded.data_config["input_size"] == (3, 48, 48)
    assert loaded.data_config["mean"] == pytest.approx((0.1, 0.2, 0.3))
    assert loaded.data_config["interpolation"] == "bilinear"
    probe = Probe(loaded, rollout=None)
    image = (torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(6)) * 255).round()
    ours = probe.preprocessing.normalise(probe.preprocessing.display_image(image / 255)[0])
    theirs = processor(images=image.to(torch.uint8), return_tensors="pt").pixel_values[0]
    assert (ours - theirs).abs().max() < 0.02  # resize implementations differ in rounding
    assert probe(image / 255).maps.shape == (2, 2, 6, 6)  # 48 px: interpolated, 6x6 grid


def test_deit_processor_refuses_center_crop_it_cannot_reproduce(tmp_path, saved):
    directory = tmp_path / "deit"
    saved["deit-distilled"][0].save_pretrained(directory)
    transformers.DeiTImageProcessor().save_pretrained(directory)
    loaded = load_model(ModelSpec(f"hf:{directory}"))
    assert loaded.data_config["crop_pct"] == pytest.approx(224 / 256)
    with pytest.raises(ValueError, match="use preprocess='resize'"):
        Probe(loaded, preprocess="center-crop")


def test_the_fixture_reads_an_hf_model_and_writes_report_and_baselines(pytester, saved):
    directory = saved["dinov2-registers"][1]
    pytester.makepyfile(
        """
        import torch

        def test_attention(vitattn, vitattn_model):
            attn = vitattn(torch.rand(3, 40, 40))
            assert attn.maps.shape == (2, 2, 4, 4)
            assert vitattn_model.anatomy.family == "hf-dinov2-registers"
            attn.matches_baseline()
        """
    )
    result = pytester.runpytest(
        f"--vitattn-model=hf:{directory}",
        "--vitattn-report=out/report.html",
        "--vitattn-missing-baselines=write",
    )
    result.assert_outcomes(passed=1)
    records = json.loads((pytester.path / "out" / "results.json").read_text())["records"]
    assert records[0]["model"]["name"] == f"hf:{directory}"
    assert records[0]["num_prefix_tokens"] == 4
    assert list(pytester.path.rglob("*.safetensors"))


def test_without_transformers_the_plugin_works_and_hf_names_say_how_to_install(tmp_path):
    code = """
import sys
sys.modules["transformers"] = None  # as if not installed
import pytest_vitattn.plugin, pytest_vitattn.models
from pytest_vitattn.models import ModelSpec, load_model
from pytest_vitattn.errors import ModelLoadError
assert load_model(ModelSpec("vitattn_tiny_shapes")).anatomy.family == "vit"
try:
    load_model(ModelSpec("hf:facebook/dinov2-small"))
except ModelLoadError as error:
    print("REFUSED:", error)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert "REFUSED: hf: models need the transformers package" in out.stdout
    assert "pip install 'pytest-vitattn[transformers]'" in out.stdout


def _tiny_clip_config(cls):
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    return cls(vision_config=SMALL, text_config={**text, "intermediate_size": 64})


OTHER_CLASSES = {
    "ViTModel": lambda: transformers.ViTModel(transformers.ViTConfig(**SMALL)),
    "DeiTModel": lambda: transformers.DeiTModel(transformers.DeiTConfig(**SMALL)),
    "CLIPVisionModelWithProjection": lambda: transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(**SMALL)
    ),
    "CLIPModel": lambda: transformers.CLIPModel(_tiny_clip_config(transformers.CLIPConfig)),
    "SiglipModel": lambda: transformers.SiglipModel(_tiny_clip_config(transformers.SiglipConfig)),
}


@pytest.mark.parametrize("class_name", list(OTHER_CLASSES))
def test_the_other_classes_in_the_table(tmp_path, class_name):
    torch.manual_seed(0)
    model = OTHER_CLASSES[class_name]().eval()
    model.save_pretrained(tmp_path)
    loaded = load_model(ModelSpec(f"hf:{tmp_path}"))
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    extraction = extract_cls_attention(loaded.model, pixels, rollout_fusion=None)
    vision = getattr(model, "vision_model", model)
    if class_name == "SiglipModel":
        assert loaded.anatomy.family == "hf-siglip-pool"
        assert extraction.rows.shape == (1, 1, 2, 16)
        return
    assert loaded.anatomy.family.startswith(("hf-vit", "hf-deit", "hf-clip"))
    torch.testing.assert_close(extraction.rows, eager_cls_rows(vision, pixels), atol=1e-6, rtol=0)


def test_swin_for_classification_is_refused_too(tmp_path):
    config = transformers.SwinConfig(
        embed_dim=16, depths=[1, 1], num_heads=[1, 1], image_size=32, patch_size=4, window_size=2
    )
    transformers.SwinForImageClassification(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="no CLS token"):
        load_model(ModelSpec(f"hf:{tmp_path}"))


def test_every_row_of_the_readme_table_is_checked_here():
    from pytest_vitattn.extract.catalog import HF_FAMILIES

    assert {case.check for case in HF_FAMILIES} == {*FAMILIES, "siglip", "swin"}
