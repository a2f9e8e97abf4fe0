"""The kit inside other trainers: Hugging Face ``transformers.Trainer`` and ``lightning.Trainer``.

Each integration lives in its own module (:mod:`atheria_kit.integrations.huggingface`,
:mod:`atheria_kit.integrations.lightning`) and imports its framework only there, so ``import atheria_kit`` stays
light. The frameworks are optional: ``pip install "atheria_kit[integrations]"`` (Colab and Kaggle already have
``transformers``); a missing one is named by :func:`require` with the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingIntegrationError", "require"]


class MissingIntegrationError(ImportError):
    """An integration's framework is not installed (the message says which and how to install it)."""


def require(module: str, *, package: str | None = None, integration: str) -> ModuleType:
    """Import ``module`` for ``integration``, or raise :class:`MissingIntegrationError` naming the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = package or module.split(".")[0]
        raise MissingIntegrationError(
            f"atheria_kit.integrations.{integration} needs the '{pkg}' package, which is not installed ({e}); "
            f"install it with: pip install {pkg}   (or: pip install \"atheria_kit[integrations]\")") from e
