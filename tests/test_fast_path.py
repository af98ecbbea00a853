"""The fast path: same rows as the fx path, no N x N matrix, one forward, the model untouched.

The per-family equality of both paths with an independent reference is in
``tests/test_families.py``; these tests pin the fast path's own promises.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from pytest_vitattn.errors import ImageError, UnsupportedModelError
from pytest_vitattn.extract import Anatomy, AttentionSite, describe, extract_cls_attention
from pytest_vitattn.extract.fast import fast_cls_rows
from pytest_vitattn.models import ModelSpec, load_model
from pytest_vitattn.probe import Probe

TOKENS = 1 + 4 * 4


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))


def state(model: nn.Module) -> tuple:
    """Everything extraction could leave behind on a model."""
    return (
        [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")],
        [m.training for m in model.modules()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
        torch._C._len_torch_function_stack(),
    )


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_fast_rows_and_rollout_equal_the_fx_path(model, pixels, fusion):
    fast = extract_cls_attention(model, pixels, method="fast", rollout_fusion=fusion)
    fx = extract_cls_attention(model, pixels, method="fx", rollout_fusion=fusion)
    torch.testing.assert_close(fast.rows, fx.rows, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.rollout, fx.rollout, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.logits, model(pixels), atol=1e-5, rtol=0)


def test_a_batch_gives_each_image_its_own_rows(model, pixels):
    together = extract_cls_attention(model, pixels, method="fast")
    for index in range(pixels.shape[0]):
        alone = extract_cls_attention(model, pixels[index : index + 1], method="fast")
        torch.testing.assert_close(together.rows[index : index + 1], alone.rows, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            together.rollout[index : index + 1], alone.rollout, atol=1e-6, rtol=0
        )


class _ShapeLog(TorchDispatchMode):
    """Records the shape of every tensor an aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.shapes.append(tuple(tensor.shape))
        return out


@pytest.mark.parametrize(("rollout", "squares"), [(None, False), ("mean", True)])
def test_without_rollout_no_token_by_token_matrix_is_ever_made(model, pixels, rollout, squares):
    log = _ShapeLog()
    with log:
        extraction = extract_cls_attention(model, pixels, method="fast", rollout_fusion=rollout)
    made_square = any(len(s) >= 2 and s[-2:] == (TOKENS, TOKENS) for s in log.shapes)
    assert made_square is squares  # the check can see N x N matrices when they are made
    assert extraction.rows.shape == (3, 12, 3, TOKENS)
    assert extraction.rows.nbytes == 3 * 12 * 3 * TOKENS * 4


def test_the_model_is_left_as_it_was(model, pixels):
    before = state(model)
    extract_cls_attention(model, pixels, method="fast")
    extract_cls_attention(model, pixels, method="fx")
    assert state(model) == before


def test_the_model_is_left_as_it_was_when_a_block_raises(model, pixels):
    before = state(model)

    def broken(*_):
        raise RuntimeError("broken block")

    handle = model.blocks[3].attn.register_forward_hook(broken)
    try:
        with pytest.raises(RuntimeError, match="broken block"):
            extract_cls_attention(model, pixels, method="fast")
    finally:
        handle.remove()
    assert state(model) == before
    assert extract_cls_attention(model, pixels, method="fast").rows.shape[1] == 12


def test_a_model_with_fused_attention_off_is_read_and_left_off(pixels):
    torch.manual_seed(0)
    unfused = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    for module in unfused.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    fast = extract_cls_attention(unfused, pixels, method="fast")
    fx = extract_cls_attention(unfused, pixels, method="fx")
    torch.testing.assert_close(fast.rows, fx.rows, atol=1e-5, rtol=0)
    assert not any(m.fused_attn for m in unfused.modules() if hasattr(m, "fused_attn"))


def test_a_model_in_training_mode_is_read_in_eval_mode_and_restored(model, pixels):
    expected = extract_cls_attention(model, pixels, method="fast").rows
    model.train()
    model.blocks[0].eval()  # a mixed state must come back as it was
    try:
        training = [m.training for m in model.modules()]
        rows = extract_cls_attention(model, pixels, method="fast").rows
        assert [m.training for m in model.modules()] == training
    finally:
        model.eval()
    torch.testing.assert_close(rows, expected, atol=0, rtol=0)


class _Site(nn.Module):
    """Calls SDPA on x as q, k (first ``kv_heads`` heads) and v, with a mask or causally."""

    def __init__(self, mask: torch.Tensor | None, causal: bool, kv_heads: int) -> None:
        super().__init__()
        self.mask, self.causal, self.kv_heads = mask, causal, kv_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = x[:, : self.kv_heads] * 0.7
        gqa = self.kv_heads != x.shape[1]
        return F.scaled_dot_product_attention(
            x, kv, kv, attn_mask=self.mask, is_causal=self.causal, enable_gqa=gqa
        )


class _Wrapper(nn.Module):
    def __init__(self, site: nn.Module) -> None:
        super().__init__()
        self.site = site

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.site(x)


def _anatomy(num_tokens: int) -> Anatomy:
    return Anatomy(
        family="test",
        sites=(AttentionSite("site", "site.softmax", 0),),
        num_prefix_tokens=1,
        query_index=0,
        fast_path=True,
        num_queries=num_tokens,
        named_queries=(("cls", 0),),
        has_rollout=True,
        grid_rule=lambda _model, _hw: (1, num_tokens - 1),
    )


def _masks() -> dict[str, tuple[torch.Tensor | None, bool, int]]:
    generator = torch.Generator().manual_seed(5)
    keep = torch.rand(7, 7, generator=generator) > 0.3
    keep.fill_diagonal_(True)
    return {
        "float bias": (torch.randn(1, 4, 7, 7, generator=generator), False, 4),
        "boolean mask": (keep, False, 4),
        "causal": (None, True, 4),
        "grouped-query": (None, False, 2),
    }


@pytest.mark.parametrize("rollout_fusion", [None, "mean"])
@pytest.mark.parametrize("case", list(_masks()))
def test_rows_honour_what_the_fused_call_was_given(case, rollout_fusion):
    mask, causal, kv_heads = _masks()[case]
    x = torch.randn(2, 4, 7, 8, generator=torch.Generator().manual_seed(6))
    model = _Wrapper(_Site(mask, causal, kv_heads))
    rows, rollout, output = fast_cls_rows(model, x, _anatomy(7), 3, rollout_fusion)
    k = (x[:, :kv_heads] * 0.7).repeat_interleave(4 // kv_heads, dim=1)
    logits = x @ k.transpose(-2, -1) / math.sqrt(8)
    if causal:
        logits = logits.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), float("-inf"))
    elif mask is not None and mask.dtype == torch.bool:
        logits = logits.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        logits = logits + mask
    expected = logits.softmax(dim=-1)
    torch.testing.assert_close(rows[:, 0], expected[:, :, 3], atol=1e-6, rtol=0)
    # With rollout the site's output comes from the full matrix instead of the fused kernel.
    torch.testing.assert_close(output, model(x), atol=1e-6, rtol=0)
    assert (rollout is None) == (rollout_fusion is None)


def test_a_site_that_makes_no_fused_call_is_refused_with_the_fx_hint():
    class Manual(nn.Module):
        def forward(self, x):
            return (x @ x.transpose(-2, -1)).softmax(dim=-1) @ x

    with pytest.raises(UnsupportedModelError, match=r"made 0 fused attention calls.*'fx'"):
        fast_cls_rows(_Wrapper(Manual()), torch.randn(1, 2, 5, 4), _anatomy(5), 0, None)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(3, 64, 64), r"\(batch, channels, height, width\) tensor, got \(3, 64, 64\)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "must be a float tensor"),
        (torch.zeros(1, 3, 64, 64, device="meta"), "pixels are on meta but the model is on cpu"),
        (torch.zeros(1, 3, 64, 96), "the input is 64x96 pixels, but the model was built for 64x64"),
    ],
)
def test_bad_pixels_get_a_clear_error(model, bad, message):
    with pytest.raises(ImageError, match=message):
        extract_cls_attention(model, bad)


def test_auto_uses_the_fast_path_and_fx_stays_available(model, pixels):
    assert describe(model).fast_path
    assert extract_cls_attention(model, pixels).method == "fast"
    assert extract_cls_attention(model, pixels, method="fx").method == "fx"
    with pytest.raises(ValueError, match="'slow' is not one of auto, fast, fx"):
        extract_cls_attention(model, pixels, method="slow")


@pytest.mark.parametrize("extraction", ["auto", "fx"])
def test_probe_runs_a_list_as_one_forward_and_records_the_method(extraction):
    loaded = load_model(ModelSpec("deit_tiny_patch16_224", "random"))
    forwards = []  # the patch embedding runs once per forward, on either path
    handle = loaded.model.patch_embed.proj.register_forward_hook(lambda *_: forwards.append(1))
    try:
        images = [np.full((40, 50, 3), value, dtype=np.uint8) for value in (0, 120, 250)]
        results = Probe(loaded, extraction=extraction, rollout=None)(images)
    finally:
        handle.remove()
    expected = "fast" if extraction == "auto" else "fx"
    assert len(results) == 3
    assert [result.record.method for result in results] == [expected] * 3
    assert [result.record.to_dict()["method"] for result in results] == [expected] * 3
    assert len(forwards) == 1
