"""File names and fragment ids derived from data: safe on every file system, unique, stable."""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["PageNames", "anchor"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_LONGEST = 80


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _safe(text: str) -> str:
    """``text`` with only ASCII letters, digits, ``_`` and ``-``; a digest is added when anything changed."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")  # É -> E
    cleaned = _UNSAFE.sub("_", ascii_text).strip("_")[:_LONGEST]
    if cleaned == text:
        return text
    return f"{cleaned}-{_digest(text)}" if cleaned else _digest(text)


def anchor(*parts: str) -> str:
    """A fragment id for ``parts`` (e.g. ``item``, the field, the item id) that needs no URL escaping."""
    return "-".join(_safe(part) for part in parts)


class PageNames:
    """One page name per service id, unique even where file names ignore case.

    ``SVC-ADM-001`` → ``SVC-ADM-001.html``; ids with other characters (``/``, spaces, accents) get a
    cleaned name plus a digest of the id; a name already taken (the same id twice, or ids differing in
    case only) gets ``-2``, ``-3``, ...
    """

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def name(self, service_id: str) -> str:
        """The page file name (``<name>.html``) for the next record of ``service_id``."""
        base = _safe(service_id)
        candidate = base
        number = 1
        while candidate.casefold() in self._taken:
            number += 1
            candidate = f"{base}-{number}"
        self._taken.add(candidate.casefold())
        return f"{candidate}.html"
