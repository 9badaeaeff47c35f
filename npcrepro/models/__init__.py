"""Model registry: every network of the book is built by name.

>>> from npcrepro.models import build, available
>>> net = build("unet2d", in_channels=1, n_classes=1, widths=(16, 32, 64))

Chapters register their own networks with the :func:`register` decorator (on a class or on a factory
function); :func:`build` then makes them from the same parameters a notebook or the CLI passes.
Models return logits; the loss or the inference code applies the sigmoid/softmax.
"""
from __future__ import annotations

import importlib
from typing import Callable

from npcrepro.errors import ParameterError

__all__ = ["build", "register", "available", "count_parameters"]

_REGISTRY: dict[str, Callable] = {}
# Modules imported lazily on the first build()/available() so that their @register calls run.
_BUILTIN_MODULES = ["npcrepro.models.unet"]
_loaded = False


def register(name: str, *, overwrite: bool = False) -> Callable:
    """Decorator registering a model class or factory under ``name`` (lower case)."""
    key = name.lower()

    def deco(obj: Callable) -> Callable:
        if key in _REGISTRY and _REGISTRY[key] is not obj and not overwrite:
            raise ParameterError(f"model {name!r} is already registered ({_REGISTRY[key]!r})")
        _REGISTRY[key] = obj
        return obj

    return deco


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def available() -> list[str]:
    """Registered model names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def build(name: str, **kwargs):
    """Build the model registered as ``name`` with keyword arguments.

    Raises :class:`~npcrepro.errors.ParameterError` for an unknown name (listing the valid ones) or an
    argument the model does not take.
    """
    _load_builtins()
    key = name.lower()
    if key not in _REGISTRY:
        raise ParameterError(f"unknown model {name!r} (valid: {', '.join(available())})")
    try:
        return _REGISTRY[key](**kwargs)
    except TypeError as exc:
        raise ParameterError(f"model {name!r}: {exc}") from None


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
