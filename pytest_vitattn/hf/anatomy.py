"""Where a transformers vision model keeps its CLS attention, read from its modules and config.

Families (embedding class -> token layout), each checked in ``tests/test_hf_models.py``
against the model's own eager ``output_attentions=True``:

* ``ViTEmbeddings``, ``Dinov2Embeddings``, ``CLIPVisionEmbeddings``: [CLS, patches];
* ``DeiTEmbeddings``: [CLS, distillation, patches];
* ``Dinov2WithRegistersEmbeddings``: [CLS, registers, patches], the count from
  ``config.num_register_tokens`` (checked against the register parameter);
* ``SiglipVisionEmbeddings``: patches only, no CLS token; the attention-pooling head's query
  (``head.probe``) is read, over the final tokens, one layer, no rollout.

Anything else (Swin: windowed attention, no CLS token; other classes not verified) is
refused with the reason. The attention sites are the modules of the class the model names
for ``output_attentions`` (``_can_record_outputs['attentions']``), in forward order.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pytest_vitattn.errors import ImageError, UnsupportedModelError
from pytest_vitattn.extract.anatomy import Anatomy, AttentionSite

# Embedding class -> (family, prefix tokens before the patches, in order).
_LAYOUTS = {
    "ViTEmbeddings": ("hf-vit", ("cls",)),
    "DeiTEmbeddings": ("hf-deit", ("cls", "dist")),
    "Dinov2Embeddings": ("hf-dinov2", ("cls",)),
    "Dinov2WithRegistersEmbeddings": ("hf-dinov2-registers", ("cls", "registers")),
    "CLIPVisionEmbeddings": ("hf-clip", ("cls",)),
    "SiglipVisionEmbeddings": ("hf-siglip", ()),
}
_VERIFIED_ATTENTION = {
    "ViTAttention",
    "DeiTAttention",
    "Dinov2Attention",
    "Dinov2WithRegistersAttention",
    "CLIPAttention",
    "SiglipAttention",
}
WHAT_WORKS = (
    "pytest-vitattn reads these transformers vision models: ViT, DeiT (distilled too), "
    "DINOv2 (with registers too), CLIP vision and SigLIP vision (its pooling query)."
)


def describe_hf(wrapper: nn.Module) -> Anatomy:
    """The ``Anatomy`` of an ``HFVision`` wrapper's model, or refuse with the reason.

    Raises:
        UnsupportedModelError: no CLS-like query, or a model class not verified.
    """
    model = wrapper.model
    name = type(model).__name__
    embeddings = _embeddings(model)
    kind = type(embeddings).__name__ if embeddings is not None else None
    if kind not in _LAYOUTS:
        raise UnsupportedModelError(
            f"{name} (model_type {model.config.model_type!r}) embeds its input with "
            f"{kind or 'no patch embedding pytest-vitattn knows'}: it has no CLS token or "
            f"attention-pooling query pytest-vitattn has verified (Swin's windowed attention "
            f"and CNNs have no CLS attention row). {WHAT_WORKS}"
        )
    family, prefix_kinds = _LAYOUTS[kind]
    patch_conv = _patch_conv(embeddings, name)
    grid_rule = _grid_rule(patch_conv, wrapper)
    if family == "hf-siglip":
        return _pooling_head(model, name, grid_rule)
    sites = _sites(model, name)
    named: list[tuple[str, int]] = []
    prefix = 0
    for token in prefix_kinds:
        if token == "cls":
            named.append(("cls", prefix))
            prefix += 1
        elif token == "dist":
            _require(embeddings, "distillation_token", name)
            named.append(("dist", prefix))
            prefix += 1
        else:
            prefix += _register_count(model, embeddings, name)
    return Anatomy(
        family=family,
        sites=sites,
        num_prefix_tokens=prefix,
        query_index=0,
        fast_path=True,
        num_queries=prefix,
        named_queries=tuple(named),
        has_rollout=True,
        grid_rule=grid_rule,
    )


def _embeddings(model: nn.Module) -> nn.Module | None:
    for _, module in model.named_modules():
        if type(module).__name__.endswith("Embeddings"):
            return module
    return None


def _sites(model: nn.Module, name: str) -> tuple[AttentionSite, ...]:
    recorded = getattr(type(model), "_can_record_outputs", None) or {}
    attention_class = recorded.get("attentions")
    if not isinstance(attention_class, type) or attention_class.__name__ not in (
        _VERIFIED_ATTENTION
    ):
        raise UnsupportedModelError(
            f"{name} records its attentions with {attention_class!r}, not one of the "
            f"attention classes pytest-vitattn has verified. {WHAT_WORKS}"
        )
    paths = [path for path, module in model.named_modules() if type(module) is attention_class]
    if not paths:
        raise UnsupportedModelError(f"{name} has no {attention_class.__name__} modules")
    return tuple(
        AttentionSite(f"model.{path}", f"model.{path}", layer) for layer, path in enumerate(paths)
    )


def _register_count(model: nn.Module, embeddings: nn.Module, name: str) -> int:
    registers = _require(embeddings, "register_tokens", name)
    count = int(getattr(model.config, "num_register_tokens", -1))
    if registers.shape[1] != count:
        raise UnsupportedModelError(
            f"{name}: config.num_register_tokens is {count} but the model has "
            f"{registers.shape[1]} register tokens; the token layout is ambiguous"
        )
    return count


def _require(embeddings: nn.Module, attribute: str, name: str) -> Any:
    value = getattr(embeddings, attribute, None)
    if value is None:
        raise UnsupportedModelError(
            f"{name}'s {type(embeddings).__name__} has no {attribute}; its token layout is "
            "not the one pytest-vitattn verified"
        )
    return value


def _pooling_head(model: nn.Module, name: str, grid_rule: Any) -> Anatomy:
    paths = [
        path
        for path, module in model.named_modules()
        if type(module).__name__ == "SiglipMultiheadAttentionPoolingHead"
    ]
    if len(paths) != 1:
        raise UnsupportedModelError(
            f"{name} has no CLS token and no attention-pooling head (vision_use_head=False?), "
            f"so there is no CLS-like query to read. {WHAT_WORKS}"
        )
    head = model.get_submodule(paths[0])
    site = f"model.{paths[0]}.attention"
    return Anatomy(
        family="hf-siglip-pool",
        sites=(AttentionSite(site, site, 0),),
        num_prefix_tokens=0,
        query_index=0,
        fast_path=False,  # nn.MultiheadAttention: its own weights are read (one query row)
        num_queries=int(head.probe.shape[1]),
        named_queries=(("cls", 0),),
        has_rollout=False,
        grid_rule=grid_rule,
    )


def _patch_conv(embeddings: nn.Module, name: str) -> nn.Conv2d:
    convs = [m for m in embeddings.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1:
        raise UnsupportedModelError(
            f"{name}'s {type(embeddings).__name__} has {len(convs)} convolutions; "
            "pytest-vitattn reads the patch grid from exactly one patch convolution"
        )
    return convs[0]


def _grid_rule(conv: nn.Conv2d, wrapper: nn.Module) -> Any:
    def grid(_model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
        out = []
        for axis, size in enumerate(input_hw):
            span = conv.kernel_size[axis]
            cells = (size - span) // conv.stride[axis] + 1
            if cells < 1:
                raise ImageError(
                    f"an input of {input_hw[0]}x{input_hw[1]} pixels is smaller than one patch"
                )
            out.append(cells)
        if tuple(input_hw) != wrapper.image_size and not _interpolates(wrapper):
            raise ImageError(
                f"the input is {input_hw[0]}x{input_hw[1]} pixels, but "
                f"{type(wrapper.model).__name__} was built for "
                f"{wrapper.image_size[0]}x{wrapper.image_size[1]} and cannot interpolate "
                "its position embeddings"
            )
        return out[0], out[1]

    return grid


def _interpolates(wrapper: nn.Module) -> bool:
    # The flag is passed by the wrapper; models without it (DINOv2) always interpolate.
    embeddings = _embeddings(wrapper.model)
    return wrapper.takes_interpolate_flag or hasattr(embeddings, "interpolate_pos_encoding")
