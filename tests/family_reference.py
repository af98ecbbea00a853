"""The independent reference for CLS attention rows, shared by the family tests and the census.

The attention math is redone here from each attention module's weights and its captured
input (q/k projections, RoPE, BEiT's and ViT-RelPos's relative position bias with indices
built here), not through timm's attention code, torch.fx or
``F.scaled_dot_product_attention``; only the module's own projection weights are used.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention, AttentionPoolLatent, AttentionRope
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn
from timm.models.convit import MHSA
from timm.models.eva import EvaAttention
from timm.models.mvitv2 import MultiScaleAttention
from timm.models.tnt import Attention as TntAttention
from timm.models.vision_transformer import ParallelScalingBlock
from timm.models.vision_transformer_relpos import RelPosAttention
from timm.models.volo import ClassAttention as VoloClassAttention

from pytest_vitattn.extract import describe
from pytest_vitattn.extract.catalog import FamilyCase


def create(case: FamilyCase) -> torch.nn.Module:
    """The row's tiny model; zero-initialised parameters (biases, BEiT's relative position
    table, tokens) get random values, so a path that forgot one would show."""
    torch.manual_seed(0)
    model = timm.create_model(case.model, pretrained=False, **case.kwargs).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.5)
    return model


def batch(case: FamilyCase) -> torch.Tensor:
    return torch.randn(2, 3, *case.input_hw, generator=torch.Generator().manual_seed(1))


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H * D) -> (B, H, N, D)."""
    return x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)


def rotate(x: torch.Tensor, rope: torch.Tensor, half: bool) -> torch.Tensor:
    """Rotary embedding: pairs (x_i, x_j) turned by the angle whose sin/cos ``rope`` holds."""
    sin, cos = rope.chunk(2, dim=-1)
    if half:
        first, second = x.chunk(2, dim=-1)
        turned = torch.cat([-second, first], dim=-1)
    else:
        turned = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    return x * cos + turned * sin


def beit_bias(module: BeitAttention) -> torch.Tensor:
    """(H, N, N) BEiT relative position bias, the index built from the paper's definition."""
    height, width = module.window_size
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dy = ys.flatten()[:, None] - ys.flatten()[None, :]
    dx = xs.flatten()[:, None] - xs.flatten()[None, :]
    patches = (dy + height - 1) * (2 * width - 1) + dx + width - 1
    distances = (2 * height - 1) * (2 * width - 1)
    index = torch.full((height * width + 1,) * 2, distances + 2)  # CLS -> CLS
    index[1:, 1:] = patches
    index[0, 1:] = distances  # CLS -> patch
    index[1:, 0] = distances + 1  # patch -> CLS
    table = module.relative_position_bias_table
    return table[index].permute(2, 0, 1)


def relpos_mlp_bias(module: RelPosAttention) -> torch.Tensor:
    """(H, N, N) ViT-RelPos bias: the module's MLP applied to log-spaced relative offsets
    (dy, dx) = (y_query - y_key, x_query - x_key) built here; prefix rows and columns 0."""
    rel_pos = module.rel_pos
    assert rel_pos.mode == "cr", rel_pos.mode  # the checked models; other modes differ
    height, width = rel_pos.window_size
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    dy = (ys.flatten()[:, None] - ys.flatten()[None, :]).float()
    dx = (xs.flatten()[:, None] - xs.flatten()[None, :]).float()
    offsets = torch.stack([dy, dx], dim=-1)
    logs = torch.sign(offsets) * torch.log1p(offsets.abs())
    patches = rel_pos.mlp(logs).permute(2, 0, 1)  # (H, P, P)
    prefix = rel_pos.prefix_tokens
    bias = torch.zeros(patches.shape[0], prefix + height * width, prefix + height * width)
    bias[:, prefix:, prefix:] = patches
    return bias


def mvit_projections(
    module: MultiScaleAttention, x: torch.Tensor, feat_size
) -> tuple[torch.Tensor, torch.Tensor, None]:
    """MViTv2 with a class token: the CLS query (B, H, 1, D) and the keys (B, H, 1 + k, D),
    the patch keys pooled by the module's depthwise convolution (weights applied here with
    ``F.conv2d``), the CLS key in front. The relative position bias touches only patch
    queries and patch keys (rows and columns 1:), so the CLS row has no bias."""
    assert module.has_cls_token and isinstance(module.pool_k, torch.nn.Conv2d), module
    h = module.num_heads
    batch = x.shape[0]
    q_all, k_all, _ = F.linear(x, module.qkv.weight, module.qkv.bias).chunk(3, dim=-1)
    q = heads(q_all[:, :1], h)  # the CLS query; pooling leaves it as it is
    k = heads(k_all, h)  # (B, H, N, D)
    height, width = feat_size
    depth = k.shape[-1]
    patches = k[:, :, 1:].reshape(batch * h, height, width, depth).permute(0, 3, 1, 2)
    conv = module.pool_k
    pooled = F.conv2d(
        patches, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
    )  # (B * H, D, kh, kw)
    pooled = pooled.reshape(batch, h, depth, -1).transpose(2, 3)
    k = torch.cat([k[:, :, :1], pooled], dim=2)
    if module.norm_q is not None:
        q = F.layer_norm(q, (depth,), module.norm_q.weight, module.norm_q.bias, module.norm_q.eps)
    if module.norm_k is not None:
        k = F.layer_norm(k, (depth,), module.norm_k.weight, module.norm_k.bias, module.norm_k.eps)
    return q, k, None


def projections(
    module: torch.nn.Module, x: torch.Tensor, kwargs: dict
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q (B, H, Q, D), k (B, H, N, D) and an additive bias from the module's weights."""
    if isinstance(module, MultiScaleAttention):
        return mvit_projections(module, x, kwargs["feat_size"])
    if isinstance(module, VoloClassAttention):
        h, dim = module.num_heads, module.q.out_features
        k = F.linear(
            x, module.kv.weight[:dim], None if module.kv.bias is None else module.kv.bias[:dim]
        )
        return heads(module.q(x[:, :1]), h), heads(k, h), None
    if isinstance(module, TntAttention):
        h, dim = module.num_heads, module.hidden_dim
        bias = module.qk.bias
        q = F.linear(x, module.qk.weight[:dim], None if bias is None else bias[:dim])
        k = F.linear(x, module.qk.weight[dim:], None if bias is None else bias[dim:])
        return heads(q, h), heads(k, h), None
    if isinstance(module, ParallelScalingBlock):
        y = F.linear(module.in_norm(x), module.in_proj.weight, module.in_proj.bias)
        _, q, k, _ = torch.split(y, module.in_split, dim=-1)
        h = module.num_heads
        return module.q_norm(heads(q, h)), module.k_norm(heads(k, h)), None
    if isinstance(module, ClassAttn):
        h = module.num_heads
        return heads(module.q(x[:, :1]), h), heads(module.k(x), h), None
    if isinstance(module, AttentionPoolLatent):
        if module.pos_embed is not None:
            x = x + module.pos_embed
        h, dim = module.num_heads, module.kv.out_features // 2
        q = heads(module.q(module.latent.expand(x.shape[0], -1, -1)), h)
        k = heads(F.linear(x, module.kv.weight[:dim], module.kv.bias[:dim]), h)
        return module.q_norm(q), module.k_norm(k), None
    h = module.num_heads
    if getattr(module, "qkv", None) is not None:
        dim = module.qkv.weight.shape[0] // 3
        bias = module.qkv.bias
        if getattr(module, "q_bias", None) is not None:  # EVA/BEiT: no k bias
            bias = torch.cat([module.q_bias, torch.zeros_like(module.q_bias), module.v_bias])
        q = F.linear(x, module.qkv.weight[:dim], None if bias is None else bias[:dim])
        k = F.linear(x, module.qkv.weight[dim : 2 * dim], None if bias is None else bias[dim:-dim])
    else:
        q, k = module.q_proj(x), module.k_proj(x)
    q, k = heads(q, h), heads(k, h)
    if hasattr(module, "q_norm"):  # BEiT has no q/k norm
        q, k = module.q_norm(q), module.k_norm(k)
    rope = kwargs.get("rope")
    if isinstance(module, (EvaAttention, AttentionRope)) and rope is not None:
        prefix, half = module.num_prefix_tokens, module.rotate_half
        q = torch.cat([q[:, :, :prefix], rotate(q[:, :, prefix:], rope, half)], dim=2)
        k = torch.cat([k[:, :, :prefix], rotate(k[:, :, prefix:], rope, half)], dim=2)
    if isinstance(module, BeitAttention):
        return q, k, beit_bias(module) if module.relative_position_bias_table is not None else None
    if isinstance(module, RelPosAttention):
        assert module.rel_pos is not None and kwargs.get("shared_rel_pos") is None
        return q, k, relpos_mlp_bias(module)
    assert isinstance(module, (Attention, EvaAttention, AttentionRope, MHSA)), type(module)
    return q, k, None


def reference_rows(model, pixels: torch.Tensor, query: int, anatomy=None):
    """(B, L, H, N) query rows recomputed from every site's captured input and weights; for
    a model with a grid per layer (PiT, MViTv2), a list of L (B, H_l, N_l)."""
    anatomy = anatomy or describe(model)
    captured: dict[str, tuple] = {}
    handles = [
        model.get_submodule(site.module_path).register_forward_pre_hook(
            lambda _m, args, kwargs, path=site.module_path: captured.__setitem__(
                path, (args[0], {**kwargs, **({"feat_size": args[1]} if len(args) > 1 else {})})
            ),
            with_kwargs=True,
        )
        for site in anatomy.sites
    ]
    try:
        with torch.no_grad():
            model(pixels)
            layers: dict[int, list[torch.Tensor]] = {}
            for site in anatomy.sites:
                module = model.get_submodule(site.module_path)
                x, kwargs = captured[site.module_path]
                q, k, bias = projections(module, x, kwargs)
                logits = torch.einsum("bhd,bhnd->bhn", q[:, :, query], k) / math.sqrt(q.shape[-1])
                if bias is not None:
                    logits = logits + bias[:, query]
                layers.setdefault(site.layer, []).append(logits.softmax(dim=-1))
    finally:
        for handle in handles:
            handle.remove()
    per_layer = [torch.cat(parts, dim=1) for parts in layers.values()]
    if anatomy.layer_grid_rule is not None:
        return per_layer
    return torch.stack(per_layer, dim=1)


def cls_reading_blocks(model: torch.nn.Module) -> list[int]:
    """Indices of the blocks whose CLS token may read a patch, from each block's own fixed
    mask (``attn_mask``: -inf where a query may not read a key): the blocks the plugin reads,
    one layer each. A block without a mask reads every patch."""
    prefix = model.num_prefix_tokens
    return [
        index
        for index, block in enumerate(model.blocks)
        if getattr(block, "attn_mask", None) is None
        or bool(torch.isfinite(block.attn_mask[:prefix, prefix:]).any())
    ]
