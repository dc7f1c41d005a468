"""Names shared by the model modules, importable without loading any model SDK."""

from __future__ import annotations

__all__ = ["OFFLINE_MODEL_NAME", "OFFLINE_MODEL_VERSION", "is_offline"]

OFFLINE_MODEL_NAME = "offline"
OFFLINE_MODEL_VERSION = "1"
"""Bumped whenever the offline model's answers change, so cached answers are not reused."""


def is_offline(model_id: str) -> bool:
    """True for the ``offline`` model id (optionally written ``offline:<anything>``)."""
    return model_id == OFFLINE_MODEL_NAME or model_id.startswith(OFFLINE_MODEL_NAME + ":")
