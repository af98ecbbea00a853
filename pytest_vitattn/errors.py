"""Errors raised by pytest-vitattn: one base class, one subclass per kind of bad input."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class VitAttnError(Exception):
    """Base class of every error this package raises on purpose."""


class ModelLoadError(VitAttnError):
    """A model could not be created or its weights could not be loaded."""


class UnknownModelError(ModelLoadError):
    """The model name is not registered with timm."""


class WeightsError(ModelLoadError):
    """A weights file is missing, corrupt, unsafe to unpickle, or does not fit the model."""


class DeviceError(VitAttnError):
    """The requested device is not available."""


class UnsupportedModelError(VitAttnError):
    """The model has no CLS token attention that this package can read."""


class ImageError(VitAttnError):
    """An image is missing, unreadable, or of a kind that cannot be converted to RGB."""


class MaskError(VitAttnError):
    """A mask is missing, unreadable, empty, or does not match its image."""


class AttentionValueError(VitAttnError):
    """Attention maps contain NaN or infinite values, or a selection is out of range."""


class BaselineError(VitAttnError):
    """A stored attention baseline is missing, corrupt, or was made under other conditions."""


def user_facing(function: Callable[P, R]) -> Callable[P, R]:
    """Re-raise this package's errors from the caller's line, without internal frames.

    A user who passes a missing image should see their own line and one sentence, not a
    stack through preprocessing code.
    """

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        __tracebackhide__ = True
        try:
            return function(*args, **kwargs)
        except VitAttnError as error:
            raise error.with_traceback(None) from None

    return wrapper


class VitattnWarning(UserWarning):
    """Something was loaded that works but may not be what was meant (e.g. resampled weights)."""
