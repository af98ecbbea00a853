"""Errors raised by pytest-vitattn: one base class, one subclass per kind of bad input."""

from __future__ import annotations


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
