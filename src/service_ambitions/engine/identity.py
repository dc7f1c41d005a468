"""What identifies a run: the digest of its output-affecting settings and content, and its run id.

Both derive from content only (never the clock), so reruns of the same input and settings share them:
the output header, the record-cache key, resume checks and the batch record all use them.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service_ambitions.content.loader import Content
    from service_ambitions.settings import Settings

__all__ = ["run_id_for", "settings_digest"]


def settings_digest(settings: Settings, content: Content) -> str:
    """Digest of everything in the settings and content that changes the output."""
    basis = json.dumps(
        {"settings": settings.output_affecting(), "content": content.digest},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(basis.encode()).hexdigest()


def run_id_for(input_digest: str, settings_digest: str, seed: int) -> str:
    """A run id derived from what the run is made of (reruns share it)."""
    basis = f"{input_digest}|{settings_digest}|{seed}"
    return hashlib.sha256(basis.encode()).hexdigest()[:16]
