"""Merging the outputs of ``run --shard K/N`` into one output in input order (``merge``).

The shards must come from one run: their headers may differ only in ``shard``, and the input file
given must be the one they were made from (its SHA-256 is every header's ``input_digest``). Then:

1. the input is read once into the *input-order index* (``service_id`` → position, as the engine
   reads it: bad lines are not services);
2. each shard file is streamed once: every record's id is looked up, checked (in the input, owned by
   that shard, not seen before) and its byte offset noted in two arrays of the input's length;
3. the output is written in input order by seeking to each record's offset: every record line is
   copied byte for byte, so the records are those of an unsharded run of the same input and settings.

Memory is the index and the two arrays, whatever the size of the records; records are never held
(shards may be in any order: ``run --resume`` after ``quarantine rm`` appends out of input order).
The output is written to ``<output>.partial`` with its quarantine (the union of the shards' ones)
and renamed over the output only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError

from service_ambitions.domain.output import Header
from service_ambitions.domain.shard import MergedShard, Shard, shard_of
from service_ambitions.errors import InputError
from service_ambitions.store._atomic import atomic_write_bytes
from service_ambitions.store.inputs import InputLine, file_digest, read_services
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from service_ambitions.store.writer import OutputWriter, discard_partial, partial_path_for, publish_partial

__all__ = ["MergeReport", "Missing", "ShardFile", "check_compatible", "merge_shards", "read_shard_header"]

_NAMES = {
    "schema_version": "schema version",
    "settings": "settings",
    "catalogue_hash": "catalogue hash",
    "input_digest": "input digest",
}
_NO_SYNC = 1 << 62  # the partial file is synced once, on close: it is renamed over the output only then


@dataclass(frozen=True)
class ShardFile:
    """A shard output: its path, header and shard."""

    path: Path
    header: Header
    shard: Shard


@dataclass(frozen=True)
class Missing:
    """An input service with no record in the shards, and why (as far as the shards tell)."""

    service_id: str
    shard: Shard
    reason: str


@dataclass
class MergeReport:
    """What a merge did."""

    output: Path
    records: int = 0
    shards: list[MergedShard] = field(default_factory=list)
    absent: list[Shard] = field(default_factory=list)
    """Shards of the run that were not given (all their services are missing)."""
    missing: list[Missing] = field(default_factory=list)
    quarantined: int = 0


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise InputError(f"shard output {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"shard output {path} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read shard output {path}: {exc.strerror or exc}") from None


def read_shard_header(path: Path) -> ShardFile:
    """The header of a shard output.

    Raises:
        InputError: Missing or unreadable, no header line, an invalid header, or not a shard's output.
    """
    with _open(path) as handle:
        first = handle.readline()
    if not first.strip():
        raise InputError(f"{path}: empty file, no header line")
    try:
        header = Header.model_validate_json(first)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in problem["loc"]) or "(header)"
        raise InputError(f"{path}:1: not a valid schema 1.1 header: {where}: {problem['msg']}") from None
    if header.shard is None:
        made = "a merge" if header.shards is not None else "an unsharded run"
        raise InputError(f"{path}:1: not a shard output: its header has no shard (it is from {made})")
    return ShardFile(path, header, header.shard)


def _differences(first: Header, other: Header) -> list[str]:
    """The header fields (and settings keys) in which two shards of one run may not differ."""
    left, right = first.model_dump(exclude={"shard"}), other.model_dump(exclude={"shard"})
    changed: list[str] = []
    others = sorted((set(left) | set(right)) - set(_NAMES))
    for key in [*_NAMES, *others]:  # the fields the user knows first
        if left.get(key) == right.get(key):
            continue
        if key == "settings":
            old, new = left[key], right[key]
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            changed.append(f"settings ({', '.join(keys)})")
        else:
            changed.append(_NAMES.get(key, key))
    return changed


def check_compatible(shards: Sequence[ShardFile]) -> None:
    """Shards of one run: equal headers but for the shard, one shard count, each shard at most once.

    Raises:
        InputError: Naming the two files and what differs (fields, settings keys, shard counts).
    """
    first = shards[0]
    by_index: dict[int, ShardFile] = {}
    for other in shards:
        if other.shard.count != first.shard.count:
            raise InputError(
                f"cannot merge {first.path} and {other.path}: the shard counts differ "
                f"({first.path} is shard {first.shard}, {other.path} is shard {other.shard})"
            )
        changed = _differences(first.header, other.header)
        if changed:
            raise InputError(
                f"cannot merge {first.path} and {other.path}: they come from different runs "
                f"({', '.join(changed)} differ)"
            )
        earlier = by_index.setdefault(other.shard.index, other)
        if earlier is not other:
            raise InputError(f"{earlier.path} and {other.path} are both shard {other.shard}")


class _Index:
    """Input order (service id → position) and, per position, which shard holds its record and where."""

    def __init__(self, input_path: Path, redact: Callable[[Any], Any] | None) -> None:
        self.ids: list[str] = []
        self.position: dict[str, int] = {}
        for item in read_services(input_path, redact=redact):
            if isinstance(item, InputLine):
                self.position[item.service.service_id] = len(self.ids)
                self.ids.append(item.service.service_id)
        self.holder = array("I", bytes(4 * len(self.ids)))  # 0: no record yet; else 1 + shard position
        self.offset = array("q", bytes(8 * len(self.ids)))


def _records(path: Path, handle: IO[bytes], digest: Any) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line) of each record after the header; every line is fed to ``digest``."""
    offset = 0
    for number, line in enumerate(handle, start=1):
        digest.update(line)
        if number > 1 and line.strip():
            if not line.endswith(b"\n"):
                raise InputError(
                    f"{path}:{number}: the last line is incomplete (no newline): torn write? "
                    "run that shard again with --resume"
                )
            yield number, offset, line
        offset += len(line)


def _service_id(path: Path, number: int, line: bytes) -> str:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{path}:{number}: invalid JSON: {exc}") from None
    service = data.get("service") if isinstance(data, dict) else None
    service_id = service.get("service_id") if isinstance(service, dict) else None
    if not isinstance(service_id, str):
        raise InputError(f"{path}:{number}: not a record: service.service_id is missing")
    return service_id


def _scan(slot: int, shard: ShardFile, index: _Index, names: list[Path]) -> MergedShard:
    """Note where each record of one shard is; return the shard as the merged header lists it.

    Raises:
        InputError: A line is torn or not a record, or its service is not in the input, belongs to
            another shard, or already has a record (names the file, line and service).
    """
    digest = hashlib.sha256()
    records = 0
    with _open(shard.path) as handle:
        for number, offset, line in _records(shard.path, handle, digest):
            service_id = _service_id(shard.path, number, line)
            where = f"{shard.path}:{number}: service {service_id!r}"
            position = index.position.get(service_id)
            if position is None:
                raise InputError(f"{where} is not in the input file")
            if not shard.shard.owns(service_id):
                raise InputError(f"{where} does not belong to shard {shard.shard}")
            if index.holder[position]:
                raise InputError(f"{where} has a record already, in {names[index.holder[position] - 1]}")
            index.holder[position] = slot + 1
            index.offset[position] = offset
            records += 1
    return MergedShard(
        index=shard.shard.index, count=shard.shard.count, records=records, digest=digest.hexdigest()
    )


def _merge_quarantine(shards: Sequence[ShardFile], target: Path) -> dict[str, str]:
    """Copy every shard's quarantine entries into ``target``; return service id → kind (for the missing)."""
    kinds: dict[str, str] = {}
    for shard in shards:
        for entry in QuarantineStore(quarantine_dir_for(shard.path)).entries():
            path = target / f"{entry.id}.json"
            if not path.exists():  # ids are content-derived: the same entry from two shards is one entry
                atomic_write_bytes(path, entry.model_dump_json(indent=2).encode("utf-8") + b"\n")
            if entry.service_id is not None and entry.stage != "input":
                kinds.setdefault(entry.service_id, entry.kind)
    return kinds


def merge_shards(
    shard_paths: Sequence[Path],
    input_path: Path,
    output_path: Path,
    *,
    input_name: Path | None = None,
    redact: Callable[[Any], Any] | None = None,
) -> MergeReport:
    """Merge shard outputs into ``output_path`` in the order of ``input_path``; the caller holds its lock.

    Args:
        shard_paths: The shard outputs, in any order.
        input_path: The services file the shards were made from (a regular file: it is read twice).
        output_path: The merged output (its quarantine is the union of the shards' quarantines).
        input_name: How to name the input in messages (default: ``input_path``).
        redact: The run's redactor, so that service ids are read as the shards' runs read them.

    Raises:
        InputError: A shard is not readable or not a shard, the shards come from different runs or
            another input, or a record is torn, foreign, in the wrong shard or duplicated.
        PathError: The output cannot be written.
    """
    shards = [read_shard_header(path) for path in shard_paths]
    check_compatible(shards)
    name = input_name if input_name is not None else input_path
    header = shards[0].header
    if file_digest(input_path) != header.input_digest:
        raise InputError(
            f"--input-file {name} is not the input the shards were made from (its digest differs from "
            f"the input_digest of {shards[0].path})"
        )
    index = _Index(input_path, redact)
    names = [shard.path for shard in shards]
    listed = [_scan(slot, shard, index, names) for slot, shard in enumerate(shards)]
    report = MergeReport(output=output_path, shards=sorted(listed, key=lambda item: item.index))
    merged = header.model_copy(update={"shard": None, "shards": report.shards})
    discard_partial(output_path)
    partial = partial_path_for(output_path)
    try:
        report.records = _write(partial, merged, shards, index)
        kinds = _merge_quarantine(shards, quarantine_dir_for(partial))
        report.quarantined = QuarantineStore(quarantine_dir_for(partial)).count()
        publish_partial(output_path)
    except BaseException:
        discard_partial(output_path)
        raise
    given = {shard.shard.index for shard in shards}
    count = header.shard.count if header.shard is not None else 1
    report.absent = [Shard(index=k, count=count) for k in range(1, count + 1) if k not in given]
    for position, holder in enumerate(index.holder):
        if not holder:
            service_id = index.ids[position]
            owner = Shard(index=shard_of(service_id, count), count=count)
            report.missing.append(Missing(service_id, owner, _why(owner, given, kinds.get(service_id))))
    return report


def _why(owner: Shard, given: set[int], kind: str | None) -> str:
    if owner.index not in given:
        return f"shard {owner} was not given"
    if kind is not None:
        return f"quarantined in shard {owner} ({kind})"
    return f"no record in shard {owner}: did it finish? run it again with --resume"


def _write(partial: Path, header: Header, shards: Sequence[ShardFile], index: _Index) -> int:
    """Write the header and every record in input order; return the records written."""
    writer = OutputWriter(partial, sync_every=_NO_SYNC)
    written = 0
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(_open(shard.path)) for shard in shards]
        sizes = [os.fstat(handle.fileno()).st_size for handle in handles]
        writer.start(header)
        try:
            for position, holder in enumerate(index.holder):
                if not holder:
                    continue
                handle = handles[holder - 1]
                handle.seek(index.offset[position])
                line = handle.readline()
                if not line.endswith(b"\n"):
                    raise InputError(f"{shards[holder - 1].path} changed while it was being merged")
                writer.write_line(line[:-1])
                written += 1
        finally:
            writer.close()
        for shard, handle, size in zip(shards, handles, sizes, strict=True):
            if os.fstat(handle.fileno()).st_size != size:
                raise InputError(f"{shard.path} changed while it was being merged")
    return written
