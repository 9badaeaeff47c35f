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
_IMPORT_ERRORS: dict[str, str] = {}
_loaded = False


def register(name: str, *, overwrite: bool = False) -> Callable:
    """Decorator registering a model class or factory under ``name`` (lower case)."""
    key = name.lower()

    def deco(obj: Callable) -> Callable:
        if key in _REGISTRY and _REGISTRY[key] is not obj and not overwrite:
            old = _REGISTRY[key]
            # re-importing a module (e.g. autoreload) re-registers the same qualified name: allow it
            if (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) != (
                    getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)):
                raise ParameterError(f"model {name!r} is already registered ({old!r})")
        _REGISTRY[key] = obj
        return obj

    return deco


def _load_builtins() -> None:
    """Import every module of this package once, so that their @register calls have run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "blocks":
            continue
        try:
            importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:  # noqa: BLE001 - one broken model must not hide the others
            _IMPORT_ERRORS[info.name] = f"{exc.__class__.__name__}: {exc}"


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
        broken = "".join(f"; npcrepro.models.{m} failed to import ({e})" for m, e in _IMPORT_ERRORS.items())
        raise ParameterError(f"unknown model {name!r} (valid: {', '.join(available())}){broken}")
    try:
        return _REGISTRY[key](**kwargs)
    except TypeError as exc:
        raise ParameterError(f"model {name!r}: {exc}") from None


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
