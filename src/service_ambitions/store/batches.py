"""The durable record of provider batches (``run --mode batch``): ``<output>.batches.sqlite3``.

One SQLite file beside the output holds everything a later process needs to collect what an earlier
one submitted, so no request is ever paid for twice:

``intents``
    Written (and committed) *before* a batch is created: the model, the wave and the custom ids it is
    about to hold. A process killed between "created" and "recorded" leaves its intent behind; the next
    run lists the provider's recent batches, adopts the one holding those ids, and only then
    resubmits what no batch holds.
``batches``
    Every batch created: provider, model, wave, the pydantic-ai ``Batch`` handle (plain JSON, no
    secrets), status, and when it was collected.
``items``
    One row per request (its custom id, derived from the call's cache key, attempt and model): the
    batch holding it, its status, the provider's result body once collected, how many times it was
    resubmitted, and whether its cost was already counted.

Commits are ``synchronous=FULL``: a row the process acted on survives a power cut. The file belongs to
the output (its lock covers it); ``batch cancel`` and a completed run leave it for the record.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from service_ambitions.errors import PathError, UsageError

__all__ = [
    "BatchRow",
    "BatchState",
    "Intent",
    "ItemRow",
    "ItemStatus",
    "state_path_for",
]

STATE_VERSION = 1
ItemStatus = str
"""``submitted`` (in a batch not collected yet), or the provider's outcome: ``succeeded``, ``errored``,
``expired``, ``canceled``."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id TEXT NOT NULL,
    wave INTEGER NOT NULL,
    custom_ids TEXT NOT NULL,
    started REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    wave INTEGER NOT NULL,
    status TEXT NOT NULL,
    handle TEXT NOT NULL,
    request_count INTEGER NOT NULL,
    submitted REAL NOT NULL,
    collected REAL,
    PRIMARY KEY (model_id, batch_id)
);
CREATE TABLE IF NOT EXISTS items (
    custom_id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    service_id TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT,
    resubmissions INTEGER NOT NULL DEFAULT 0,
    accounted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_by_batch ON items (model_id, batch_id);
"""


def state_path_for(output: Path) -> Path:
    """``evolutions.jsonl`` → ``evolutions.jsonl.batches.sqlite3`` next to it."""
    return output.with_name(output.name + ".batches.sqlite3")


@dataclass(frozen=True)
class ItemRow:
    """One request's row."""

    custom_id: str
    model_id: str
    stage: str
    service_id: str
    batch_id: str
    status: ItemStatus
    body: str | None
    resubmissions: int
    accounted: bool


@dataclass(frozen=True)
class BatchRow:
    """One batch's row."""

    batch_id: str
    model_id: str
    provider: str
    wave: int
    status: str
    handle: str
    request_count: int
    submitted: float
    collected: float | None


@dataclass(frozen=True)
class Intent:
    """A batch about to be created (or created but not recorded, when the process died in between)."""

    id: int
    model_id: str
    wave: int
    custom_ids: tuple[str, ...]
    started: float


@dataclass(frozen=True)
class Submitted:
    """What one queued request needs in the state once its batch exists."""

    custom_id: str
    stage: str
    service_id: str


def _item(row: tuple[Any, ...]) -> ItemRow:
    custom_id, model_id, stage, service_id, batch_id, status, body, resubmissions, accounted = row
    return ItemRow(
        custom_id, model_id, stage, service_id, batch_id, status, body, resubmissions, bool(accounted)
    )


class BatchState:
    """The batches and requests of one output."""

    def __init__(self, path: Path, *, run_id: str | None = None) -> None:
        """Open (creating) the state of an output.

        Args:
            path: The state file (:func:`state_path_for`).
            run_id: The run the state belongs to; a state of another run is refused.

        Raises:
            UsageError: The file is not a batch state, or belongs to another run.
            PathError: The file cannot be opened.
        """
        self.path = path
        try:
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise UsageError(
                f"{path} is not a batch state file ({exc}); move it away to start the batches afresh"
            ) from None
        except OSError as exc:
            raise PathError(f"cannot open the batch state {path}: {exc.strerror or exc}") from None
        version = self._meta("version")
        if version is None:
            self._set_meta("version", str(STATE_VERSION))
        elif version != str(STATE_VERSION):
            raise UsageError(f"{path} has batch state version {version}; this tool reads {STATE_VERSION}")
        if run_id is not None:
            recorded = self._meta("run_id")
            if recorded is None:
                self._set_meta("run_id", run_id)
            elif recorded != run_id and self.has_pending():
                raise UsageError(
                    f"{path} holds batches of another run (run id {recorded}, this run is {run_id}: the "
                    "input or output-affecting settings changed); collect them with the old settings or "
                    "cancel them (service-ambitions batch cancel), then run again"
                )
            elif recorded != run_id:
                self._set_meta("run_id", run_id)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __enter__(self) -> BatchState:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # meta ---------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def run_id(self) -> str | None:
        """The run the state belongs to."""
        return self._meta("run_id")

    def submitted_usd(self) -> Decimal:
        """The estimated cost (batch prices) of everything submitted for this output so far."""
        return Decimal(self._meta("submitted_usd") or "0")

    def add_submitted_usd(self, amount: Decimal) -> None:
        """Add a wave's estimate to :meth:`submitted_usd` (before it is submitted)."""
        self._set_meta("submitted_usd", str(self.submitted_usd() + amount))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # items --------------------------------------------------------------------------------
    def item(self, custom_id: str) -> ItemRow | None:
        """The row of a request, if it was ever submitted."""
        row = self._db.execute(
            "SELECT custom_id, model_id, stage, service_id, batch_id, status, body, resubmissions, accounted "
            "FROM items WHERE custom_id = ?",
            (custom_id,),
        ).fetchone()
        return None if row is None else _item(row)

    def mark_accounted(self, custom_id: str) -> bool:
        """Record that a result's cost was counted; False when it already was."""
        cursor = self._db.execute(
            "UPDATE items SET accounted = 1 WHERE custom_id = ? AND accounted = 0", (custom_id,)
        )
        return cursor.rowcount == 1

    def items(self, *, status: str | None = None) -> list[ItemRow]:
        """Every request's row (of one status)."""
        query = (
            "SELECT custom_id, model_id, stage, service_id, batch_id, status, body, resubmissions, accounted "
            "FROM items"
        )
        rows = (
            self._db.execute(query + " WHERE status = ?", (status,))
            if status is not None
            else self._db.execute(query)
        )
        return [_item(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """Requests by status."""
        return dict(self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())

    # intents and submissions --------------------------------------------------------------
    def record_intent(self, model_id: str, wave: int, custom_ids: Iterable[str]) -> Intent:
        """Durably note a batch about to be created (before the provider is asked)."""
        ids = tuple(custom_ids)
        started = time.time()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO intents (model_id, wave, custom_ids, started) VALUES (?, ?, ?, ?)",
                (model_id, wave, json.dumps(ids), started),
            )
        assert cursor.lastrowid is not None
        return Intent(cursor.lastrowid, model_id, wave, ids, started)

    def intents(self) -> list[Intent]:
        """Intents with no recorded batch: the process died between creating and recording."""
        return [
            Intent(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4])
            for row in self._db.execute("SELECT id, model_id, wave, custom_ids, started FROM intents")
        ]

    def drop_intent(self, intent: Intent) -> None:
        """Forget an intent whose requests no batch holds (they are queued again)."""
        self._db.execute("DELETE FROM intents WHERE id = ?", (intent.id,))

    def record_batch(
        self,
        intent: Intent | None,
        *,
        batch_id: str,
        provider: str,
        status: str,
        handle: str,
        items: Iterable[Submitted],
        resubmitted: Iterable[str] = (),
    ) -> None:
        """Record a created batch and its requests, and retire its intent, in one transaction."""
        held = list(items)
        again = set(resubmitted)
        model_id = intent.model_id if intent is not None else ""
        wave = intent.wave if intent is not None else 0
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO batches (batch_id, model_id, provider, wave, status, handle, "
                "request_count, submitted, collected) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (batch_id, model_id, provider, wave, status, handle, len(held), time.time()),
            )
            for item in held:
                db.execute(
                    "INSERT INTO items (custom_id, model_id, stage, service_id, batch_id, status) "
                    "VALUES (?, ?, ?, ?, ?, 'submitted') ON CONFLICT (custom_id) DO UPDATE SET "
                    "batch_id = excluded.batch_id, status = 'submitted', body = NULL, "
                    "resubmissions = resubmissions + ?",
                    (
                        item.custom_id,
                        model_id,
                        item.stage,
                        item.service_id,
                        batch_id,
                        int(item.custom_id in again),
                    ),
                )
            if intent is not None:
                db.execute("DELETE FROM intents WHERE id = ?", (intent.id,))

    def adopt_batch(
        self,
        intent: Intent,
        *,
        batch_id: str,
        provider: str,
        status: str,
        handle: str,
        custom_ids: Iterable[str],
    ) -> None:
        """Record a batch found at the provider for an intent (its requests' stage is unknown until asked)."""
        held = set(custom_ids) & set(intent.custom_ids)
        self.record_batch(
            intent,
            batch_id=batch_id,
            provider=provider,
            status=status,
            handle=handle,
            items=[Submitted(custom_id, "?", "?") for custom_id in sorted(held)],
        )
        left = [custom_id for custom_id in intent.custom_ids if custom_id not in held]
        if left:
            self.record_intent(intent.model_id, intent.wave, left)

    # batches ------------------------------------------------------------------------------
    def batches(self, *, pending_only: bool = False) -> list[BatchRow]:
        """Recorded batches, oldest first (only those not collected yet)."""
        query = (
            "SELECT batch_id, model_id, provider, wave, status, handle, request_count, submitted, collected "
            "FROM batches"
        )
        if pending_only:
            query += " WHERE collected IS NULL"
        return [BatchRow(*row) for row in self._db.execute(query + " ORDER BY submitted")]

    def has_pending(self) -> bool:
        """Batches not collected yet, or intents not resolved."""
        row = self._db.execute(
            "SELECT (SELECT COUNT(*) FROM batches WHERE collected IS NULL) + (SELECT COUNT(*) FROM intents)"
        ).fetchone()
        return bool(row[0])

    def known_batch_ids(self, model_id: str) -> set[str]:
        """Every batch of a model this state knows."""
        return {
            row[0] for row in self._db.execute("SELECT batch_id FROM batches WHERE model_id = ?", (model_id,))
        }

    def update_batch(self, model_id: str, batch_id: str, *, status: str, handle: str) -> None:
        """A batch's latest status."""
        self._db.execute(
            "UPDATE batches SET status = ?, handle = ? WHERE model_id = ? AND batch_id = ?",
            (status, handle, model_id, batch_id),
        )

    def record_results(
        self, model_id: str, batch_id: str, results: Iterable[tuple[str, str, str | None]], *, handle: str
    ) -> int:
        """Store an ended batch's results and mark it collected; returns how many requests it answered.

        Args:
            model_id: The batch's model.
            batch_id: The batch.
            results: ``(custom_id, status, body)`` per request.
            handle: The ended batch's handle.
        """
        count = 0
        with self._transaction() as db:
            for custom_id, status, body in results:
                cursor = db.execute(
                    "UPDATE items SET status = ?, body = ? "
                    "WHERE custom_id = ? AND batch_id = ? AND model_id = ?",
                    (status, body, custom_id, batch_id, model_id),
                )
                count += cursor.rowcount
            # Requests the results do not list ended without a result: the provider did not run them.
            db.execute(
                "UPDATE items SET status = 'expired' "
                "WHERE batch_id = ? AND model_id = ? AND status = 'submitted'",
                (batch_id, model_id),
            )
            db.execute(
                "UPDATE batches SET status = 'ended', handle = ?, collected = ? "
                "WHERE model_id = ? AND batch_id = ?",
                (handle, time.time(), model_id, batch_id),
            )
        return count

    def forget_batch(self, model_id: str, batch_id: str) -> int:
        """Drop a cancelled batch's unanswered requests, so a later run submits them afresh."""
        with self._transaction() as db:
            cursor = db.execute(
                "DELETE FROM items "
                "WHERE model_id = ? AND batch_id = ? AND status IN ('submitted', 'canceled')",
                (model_id, batch_id),
            )
            db.execute(
                "UPDATE batches SET status = 'cancelled', collected = ? WHERE model_id = ? AND batch_id = ?",
                (time.time(), model_id, batch_id),
            )
        return cursor.rowcount
