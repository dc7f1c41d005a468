"""Feature identifiers (DOMAIN §3): stable, short, joinable."""

from __future__ import annotations

import base64
import uuid

__all__ = ["feature_id"]


def feature_id(name: str, role_id: str, plateau_name: str) -> str:
    """Return the 6-character id of a feature.

    The canonical string ``<name>|<role_id>|<plateau_name>`` is hashed to a UUIDv5 in the URL
    namespace; the id is the first six characters of the RFC 4648 Base32 encoding of its 16 bytes.

    >>> feature_id("Example", "learners", "Foundational")
    'P545N4'
    """
    digest = uuid.uuid5(uuid.NAMESPACE_URL, f"{name}|{role_id}|{plateau_name}").bytes
    return base64.b32encode(digest).decode("ascii").rstrip("=")[:6]
