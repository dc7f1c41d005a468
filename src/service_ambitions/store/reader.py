"""The public reader of ``evolutions.jsonl`` files: validates every line against schema 1.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service_ambitions.domain.output import Header, ServiceEvolution
from service_ambitions.errors import InputError
from service_ambitions.store import _json

__all__ = ["EvolutionFile", "read_evolutions"]


@dataclass
class EvolutionFile:
    """A validated output file."""

    header: Header
    records: list[ServiceEvolution]


def _fail(path: Path, line: int, message: str) -> InputError:
    return InputError(f"{path}:{line}: {message}")


def _is_schema_1_0(data: object) -> bool:
    meta = data.get("meta") if isinstance(data, dict) else None
    return isinstance(meta, dict) and str(meta.get("schema_version", "1.0")).startswith("1.0")


def iter_evolutions(path: Path) -> Iterator[Header | ServiceEvolution]:
    """Yield the header, then each record, validating as it goes.

    Raises:
        InputError: Naming the file and line of the first invalid line.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                raise _fail(path, number, "the last line is incomplete (no newline): torn write?")
            try:
                data = _json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise _fail(path, number, f"invalid JSON: {exc}") from None
            if number == 1 and _is_schema_1_0(data):
                raise _fail(
                    path,
                    number,
                    "this is a schema 1.0 file (no header line); convert it first: "
                    f"service-ambitions migrate --from 1.0 --to 1.1 --input {path} --output <new file>",
                )
            try:
                if number == 1:
                    yield Header.model_validate(data)
                else:
                    yield ServiceEvolution.model_validate(data)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = ".".join(str(part) for part in first["loc"])
                raise _fail(path, number, f"{where}: {first['msg']}") from None


def read_evolutions(path: Path) -> EvolutionFile:
    """Read and validate a whole output file."""
    items = iter_evolutions(path)
    header = next(items, None)
    if not isinstance(header, Header):
        raise InputError(f"{path}: empty file, no header line")
    records = [item for item in items if isinstance(item, ServiceEvolution)]
    return EvolutionFile(header=header, records=records)
