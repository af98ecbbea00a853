"""Refusal messages that say what the model has, what it lacks, and what to do instead.

A refusal must be true for the model it is shown for: the message is built from what is found
in the model (its class token, its attention modules by class, its constructor's arguments),
never from a guess about the family.
"""

from __future__ import annotations

import inspect

from torch import nn

from pytest_vitattn.errors import UnsupportedModelError

WHAT_WORKS = (
    "pytest-vitattn reads the attention of a CLS-like query over image patches: ViT-style "
    "models with a class token (vit_*, deit*, eva02_*, beit*, cait_*, xcit_*, convit_*, "
    "volo_*, tnt_*, crossvit_*, pit_*, mvitv2_*_cls, dinov2 with registers), "
    "attention-pooling models (global_pool='map'), or the shipped vitattn_tiny_shapes."
)

# Substrings (lower case) of attention module class names, by the kind of attention.
_WINDOWED = ("window", "partition", "halo", "maskunit", "locallygrouped", "neighborhood")
_CHANNELS = ("xca", "crosscovariance", "channelattention", "splitattn", "selectivekernel")
_ATTENTION = ("attention", "attn", "mhsa", "gpsa", "litemla")


def attention_classes(model: nn.Module) -> list[str]:
    """Class names of the model's attention modules: named like attention, or holding query
    and key projections (``qkv``, or ``q`` with ``k``/``kv``); blocks that contain them and
    the model itself excluded."""
    names: list[str] = []
    for module in model.modules():
        name = type(module).__name__
        lower = name.lower()
        if module is model or lower.endswith("block") or name in names:
            continue
        named = any(word in lower for word in _ATTENTION)
        projects = isinstance(getattr(module, "qkv", None), nn.Module) or (
            isinstance(getattr(module, "q", None), nn.Module)
            and isinstance(getattr(module, "k", getattr(module, "kv", None)), nn.Module)
        )
        if named or projects:
            names.append(name)
    return names


def has_class_token(model: nn.Module) -> bool:
    """Whether the model holds a class-token parameter (``cls_token``, ``cls_token_0``, ...)."""
    for name, _ in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1].lower()
        if leaf.startswith(("cls_token", "class_token")):
            return True
    return False


def _takes(model: nn.Module, argument: str) -> bool:
    try:
        return argument in inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):
        return False


def no_cls_clause(model: nn.Module) -> str:
    """'X has no CLS token (class_token=False, ...)': the argument named only if X takes it."""
    name = type(model).__name__
    settings = []
    if _takes(model, "class_token"):
        settings.append("class_token=False")
    if isinstance(getattr(model, "global_pool", None), str):
        settings.append(f"global_pool={model.global_pool!r}")
    detail = f" ({', '.join(settings)})" if settings else ""
    return f"{name} has no CLS token{detail}"


def no_query(model: nn.Module) -> UnsupportedModelError:
    """The refusal for a model with no CLS token, class attention or pooling query."""
    classes = attention_classes(model)
    windowed = [c for c in classes if any(w in c.lower() for w in _WINDOWED)]
    channels = [c for c in classes if any(w in c.lower() for w in _CHANNELS)]
    tokens = [c for c in classes if c not in windowed and c not in channels]
    has = []
    if windowed:
        has.append(
            f"windowed attention ({', '.join(windowed)}), where tokens attend within local windows"
        )
    if tokens:
        has.append(
            f"attention ({', '.join(tokens)}) whose queries are all patch or feature-map positions"
        )
    if channels:
        has.append(f"attention over channels ({', '.join(channels)}), not over tokens")
    if has:
        what = f"It has {'; and '.join(has)}."
    else:
        what = (
            "It has no attention modules pytest-vitattn recognises (none named *Attention* or "
            "*Attn*, none with query and key projections): a convolutional, MLP or other model "
            "without token attention."
        )
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    row_0 = "a patch's" if prefix == 0 else "another token's"
    return UnsupportedModelError(
        f"{no_cls_clause(model)}, no class-attention blocks and no attention-pooling query, so "
        f"no attention row belongs to a CLS-like query; reading row 0 would show {row_0} "
        f"attention. {what} {WHAT_WORKS}"
    )


def factorised(model: nn.Module, module: str) -> UnsupportedModelError:
    """The refusal for factorised attention (CoaT): no per-query attention row exists."""
    name = type(model).__name__
    return UnsupportedModelError(
        f"{name} has class tokens, but its attention ({module}) is factorised: the softmax "
        f"normalises each key channel over the tokens and is multiplied with the values first "
        f"(softmax(k)^T v); the queries are applied only after that, so no query, the CLS "
        f"token included, has a row of attention weights over the patches to read. "
        f"{WHAT_WORKS}"
    )
