"""Shards of a run: which services a shard owns, and how a shard is recorded in an output header.

A shard ``K/N`` owns the services whose :func:`shard_of` is ``K``: a stable hash of the ``service_id``
alone, never of a line's position, so adding, removing or moving a line of the input moves no other
service to another shard. The hash is SHA-256 of the id's UTF-8 bytes, its first 8 bytes read as a
big-endian unsigned integer, modulo ``N``, plus 1 (documented in ``docs/scaling.md``; Python's
``hash()`` is salted per process and must never be used for this).
"""

from __future__ import annotations

import hashlib
import re
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MergedShard", "Shard", "shard_of"]

_SPEC = re.compile(r"\A\s*(\d{1,9})\s*/\s*(\d{1,9})\s*\Z")


def shard_of(service_id: str, count: int) -> int:
    """The shard (1-based, of ``count``) that owns ``service_id``.

    Example:
        ``shard_of("S1", 4)`` is the same number on every machine, Python version and run.
    """
    digest = hashlib.sha256(service_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


class Shard(BaseModel):
    """Shard ``index`` of ``count`` (``"shard": {"index": K, "count": N}`` in a shard's header)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=1)
    count: int = Field(ge=1)

    @model_validator(mode="after")
    def _index_within_count(self) -> Self:
        if self.index > self.count:
            raise ValueError(f"shard index {self.index} is greater than the shard count {self.count}")
        return self

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/4"`` → ``Shard(index=2, count=4)``.

        Raises:
            ValueError: Not ``K/N`` with whole numbers ``1 <= K <= N`` (the message says which).
        """
        match = _SPEC.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not K/N (e.g. 2/4)")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 1 <= index <= count:
            raise ValueError(f"{text!r}: K must be between 1 and N, and N at least 1")
        return cls(index=index, count=count)

    def owns(self, service_id: str | None) -> bool:
        """Whether this shard processes ``service_id``.

        An input line without a usable id (invalid JSON, say) belongs to shard 1, so exactly one
        shard quarantines it.
        """
        if service_id is None:
            return self.index == 1
        return shard_of(service_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class MergedShard(Shard):
    """A shard as listed in a merged output's header: which shard, its records, its file's SHA-256."""

    records: int = Field(ge=0)
    digest: str
