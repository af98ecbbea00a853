"""A transformers vision model as the rest of pytest-vitattn sees a timm one.

``HFVision`` takes normalised pixels (B, 3, height, width) and returns logits (B, classes) or
None; it asks the model to interpolate its position embeddings when the input is not the
config's ``image_size`` (the models that take the flag), and it reads full attention
matrices the model's own way for the full-matrix path (``extraction='fx'``): eager attention,
whose attention modules return their softmax, captured by forward hooks.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class HFVision(nn.Module):
    """Wraps a transformers vision model (``PreTrainedModel``) for extraction.

    Args:
        model: the transformers model (e.g. ``ViTForImageClassification``,
            ``Dinov2WithRegistersModel``, ``CLIPVisionModel``, ``SiglipVisionModel``).

    Attributes:
        anatomy: the ``Anatomy`` (``hf.anatomy.describe_hf``), set after construction.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.anatomy: Any = None
        forward = inspect.signature(model.forward).parameters
        self.takes_interpolate_flag = "interpolate_pos_encoding" in forward
        self.image_size = _pair(getattr(model.config, "image_size", 0))

    def describe_anatomy(self) -> Any:
        """The anatomy read at load time (``extract.describe`` hands it out)."""
        return self.anatomy

    def forward(self, pixels: torch.Tensor) -> torch.Tensor | None:
        """Run the model on (B, 3, height, width) pixels; (B, classes) logits or None."""
        kwargs: dict[str, Any] = {}
        if self.takes_interpolate_flag and tuple(pixels.shape[-2:]) != self.image_size:
            kwargs["interpolate_pos_encoding"] = True
        output = self.model(pixel_values=pixels, **kwargs)
        logits = getattr(output, "logits", None)
        return logits if isinstance(logits, torch.Tensor) else None

    def attention_matrices(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every site's softmax (B, H, queries, N), as the model computes it in eager mode.

        Keyed by ``AttentionSite.fx_node`` (the site's module path). Self-attention modules
        return ``(output, weights)`` in eager mode (what ``output_attentions=True``
        collects); ``nn.MultiheadAttention`` (SigLIP's pooling head) is asked for
        per-head weights.
        """
        captured: dict[str, torch.Tensor] = {}
        handles = []
        with eager_attention(self.model):
            try:
                for site in self.anatomy.sites:
                    module = self.get_submodule(site.module_path)
                    if isinstance(module, nn.MultiheadAttention):
                        handles.append(
                            module.register_forward_pre_hook(_per_head_weights, with_kwargs=True)
                        )
                    handles.append(
                        module.register_forward_hook(
                            lambda _m, _i, out, node=site.fx_node: captured.__setitem__(
                                node, out[1]
                            )
                        )
                    )
                self(pixels)
            finally:
                for handle in handles:
                    handle.remove()
        return captured


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch the model to eager attention for the block, and back."""
    saved = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(saved)


def _per_head_weights(
    _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[1])
    return int(size), int(size)
