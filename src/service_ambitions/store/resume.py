"""Resuming an interrupted run: torn-tail repair, compatibility checks, and what is already done."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from service_ambitions.domain.output import Header
from service_ambitions.domain.shard import Shard
from service_ambitions.errors import ResumeRefused
from service_ambitions.store import _json
from service_ambitions.store.quarantine import QuarantineStore

__all__ = ["ResumeState", "broken_path_for", "prepare_resume", "repair_torn_tail"]

log = logging.getLogger("service_ambitions.resume")


def broken_path_for(output: Path) -> Path:
    """Where torn bytes of ``output`` are kept aside."""
    return output.with_name(output.name + ".broken")


@dataclass
class ResumeState:
    """What an existing output already holds."""

    header: Header | None
    done: set[str] = field(default_factory=set)
    quarantined: set[str] = field(default_factory=set)
    repaired_bytes: int = 0

    @property
    def skip(self) -> set[str]:
        """Services not to process again: written, or quarantined (until their entries are removed)."""
        return self.done | self.quarantined


def _complete_length(handle: IO[bytes], size: int) -> int:
    """Bytes up to and including the last newline (all of them when the file ends with one)."""
    if size == 0:
        return 0
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return size
    position = size
    while position > 0:  # scan back in chunks for the last newline
        step = min(65536, position)
        position -= step
        handle.seek(position)
        index = handle.read(step).rfind(b"\n")
        if index >= 0:
            return position + index + 1
    return 0


def repair_torn_tail(path: Path) -> int:
    """Move an incomplete last line (no newline) to ``<output>.broken``; return the bytes moved."""
    size = path.stat().st_size
    with path.open("rb+") as handle:
        keep = _complete_length(handle, size)
        if keep == size:
            return 0
        handle.seek(keep)
        torn = handle.read()
        with broken_path_for(path).open("ab") as broken:
            broken.write(torn + b"\n")
            broken.flush()
            os.fsync(broken.fileno())
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    log.warning("%s: moved a torn last line (%d bytes) to %s", path, len(torn), broken_path_for(path))
    return len(torn)


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [key for key in keys if old.get(key) != new.get(key)]


def prepare_resume(path: Path, expected: Header, quarantine: QuarantineStore) -> ResumeState:
    """Check that ``path`` was produced from the same input, settings and schema, and list what is done.

    Nothing on disk changes before every check has passed: a refused resume leaves the file (torn
    tail included) exactly as it was; only then is a torn last line moved aside.

    Raises:
        ResumeRefused: Naming what changed (input, settings keys, schema version, tool major version).
    """
    if not path.exists():
        return ResumeState(header=None)
    with path.open("rb") as handle:
        complete = _complete_length(handle, path.stat().st_size)
        handle.seek(0)
        first = handle.readline() if complete else b""
        header = _checked_header(path, first, expected) if first else None
        done: set[str] = set()
        number = 1
        while header is not None and handle.tell() < complete:
            line = handle.readline()
            number += 1
            data = _loads(line)
            service_id = data.get("service", {}).get("service_id") if isinstance(data, dict) else None
            if not isinstance(service_id, str):
                raise ResumeRefused(f"cannot resume {path}: line {number} is not a valid record")
            done.add(service_id)
    repaired = repair_torn_tail(path)
    if header is None:
        return ResumeState(header=None, repaired_bytes=repaired)
    quarantined: set[str] = set()
    for entry in quarantine.entries():
        systemic = isinstance(entry.payload, dict) and entry.payload.get("systemic")
        # Services that failed because nothing could succeed (no connection, bad key) are retried.
        if entry.service_id and entry.stage != "input" and not systemic:
            quarantined.add(entry.service_id)
    return ResumeState(header=header, done=done, quarantined=quarantined - done, repaired_bytes=repaired)


def _checked_header(path: Path, first: bytes, expected: Header) -> Header:
    try:
        header = Header.model_validate_json(first)
    except ValidationError as exc:
        data = _loads(first)
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version and version != expected.schema_version:
            raise ResumeRefused(
                f"cannot resume {path}: it has schema version {version}, this tool writes "
                f"{expected.schema_version} (migrate it first)"
            ) from None
        raise ResumeRefused(
            f"cannot resume {path}: line 1 is not a valid header ({exc.error_count()} error(s))"
        ) from None
    changes: list[str] = []
    if header.input_digest != expected.input_digest:
        changes.append("the input file changed (its digest differs)")
    changed_settings = _differences(header.settings, expected.settings)
    if changed_settings:
        changes.append("settings changed: " + ", ".join(changed_settings))
    if _major(header.tool_version) != _major(expected.tool_version):
        changes.append(f"tool major version changed ({header.tool_version} -> {expected.tool_version})")
    if header.mapping_sets != expected.mapping_sets or header.catalogue_hash != expected.catalogue_hash:
        changes.append("catalogues changed")
    if header.shard != expected.shard:
        changes.append(f"the shard changed ({_shard_name(header.shard)} -> {_shard_name(expected.shard)})")
    if changes:
        raise ResumeRefused(f"cannot resume {path}: " + "; ".join(changes))
    return header


def _shard_name(shard: Shard | None) -> str:
    return f"shard {shard}" if shard is not None else "unsharded"


def _loads(raw: bytes) -> Any:
    try:
        # Only ids and the schema version are read: strings, so orjson's values need no check.
        return _json.loads(raw, exact=False)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
