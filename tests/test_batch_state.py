"""The batch record beside an output, and how queued requests are cut into provider batches."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic_ai.messages import ModelRequest, UserPromptPart
from pydantic_ai.models import Model
from pydantic_ai.models.batch import BatchRequest, EncodedBatchRequest
from pydantic_ai.models.wrapper import WrapperModel

from service_ambitions.errors import UsageError
from service_ambitions.llm._batch_reconcile import handle_json
from service_ambitions.llm.batching import BatchCoordinator, _chunks, _Queued, custom_id_for
from service_ambitions.llm.deferral import BatchCall
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.store.batches import BatchState, Submitted, state_path_for


class Limited(WrapperModel):
    """The offline model with a provider's small batch limits."""

    def __init__(self, wrapped: Model, *, max_requests: int, max_bytes: int | None) -> None:
        super().__init__(wrapped)
        self._max_requests = max_requests
        self._max_bytes = max_bytes

    @property
    def batch_max_requests(self) -> int | None:
        return self._max_requests

    @property
    def batch_max_bytes(self) -> int | None:
        return self._max_bytes


def queued(number: int, size: int = 10) -> _Queued:
    call = BatchCall(key=f"{number:064x}", attempt=1, stage="features", service_id=f"S{number}")
    encoded = EncodedBatchRequest(custom_id=f"id-{number}", group="g", body="x" * size)
    return _Queued(encoded, call, resubmission=False)


def test_batches_are_cut_to_the_providers_request_limit() -> None:
    model = Limited(OfflineModel(), max_requests=3, max_bytes=None)
    chunks = list(_chunks(model, [queued(number) for number in range(7)]))
    assert [len(chunk) for chunk in chunks] == [3, 3, 1]


def test_batches_are_cut_to_the_providers_byte_limit() -> None:
    model = Limited(OfflineModel(), max_requests=100, max_bytes=30)
    items = [queued(number, size=10) for number in range(5)]  # each request: its id and body, 14 bytes
    chunks = list(_chunks(model, items))
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert [item.encoded.custom_id for chunk in chunks for item in chunk] == [f"id-{n}" for n in range(5)]


def test_custom_ids_derive_from_the_cache_key_attempt_and_model() -> None:
    call = BatchCall(key="ab" * 32, attempt=2, stage="mapping", service_id="S1")
    first = custom_id_for(call, "openai:gpt-5-mini")
    assert first.startswith("sa-" + "ab" * 20 + "-2-")
    assert len(first) <= 64  # OpenAI's limit
    assert first == custom_id_for(call, "openai:gpt-5-mini")
    assert first != custom_id_for(call, "anthropic:claude-sonnet-4-5")


def test_an_intent_is_durable_before_its_batch_and_retired_with_it(tmp_path: Path) -> None:
    path = state_path_for(tmp_path / "out.jsonl")
    with BatchState(path, run_id="r1") as state:
        intent = state.record_intent("m", 1, ["a", "b"])
    # Another process (after a crash) sees the intent.
    with BatchState(path, run_id="r1") as state:
        assert [item.custom_ids for item in state.intents()] == [("a", "b")]
        assert state.has_pending()
        state.record_batch(
            intent,
            batch_id="batch_1",
            provider="openai",
            status="in_progress",
            handle="{}",
            items=[Submitted("a", "features", "S1"), Submitted("b", "features", "S2")],
        )
        assert state.intents() == []
        row = state.item("a")
        assert row is not None
        assert (row.batch_id, row.status) == ("batch_1", "submitted")
        collected = state.record_results("m", "batch_1", [("a", "succeeded", "{}")], handle="{}")
        assert collected == 1
        assert state.counts() == {"succeeded": 1, "expired": 1}  # b had no result: not run
        assert not state.has_pending()


def test_a_resubmission_counts_against_the_bound(tmp_path: Path) -> None:
    with BatchState(tmp_path / "s.sqlite3") as state:
        coordinator = BatchCoordinator(state, max_resubmissions=1)
        for number, resubmitted in ((1, []), (2, ["a"])):
            intent = state.record_intent("m", number, ["a"])
            state.record_batch(
                intent,
                batch_id=f"batch_{number}",
                provider="openai",
                status="in_progress",
                handle="{}",
                items=[Submitted("a", "features", "S1")],
                resubmitted=resubmitted,
            )
            state.record_results("m", f"batch_{number}", [], handle="{}")
            row = state.item("a")
            assert row is not None
            assert row.resubmissions == number - 1
        last = state.item("a")
        assert last is not None
        assert not coordinator.may_resubmit(last)


def test_adopting_a_found_batch_keeps_the_requests_it_does_not_hold_as_an_intent(tmp_path: Path) -> None:
    with BatchState(tmp_path / "s.sqlite3") as state:
        intent = state.record_intent("m", 1, ["a", "b", "c"])
        state.adopt_batch(
            intent,
            batch_id="batch_9",
            provider="openai",
            status="in_progress",
            handle="{}",
            custom_ids=["a", "b"],
        )
        assert [item.custom_ids for item in state.intents()] == [("c",)]
        assert {item.custom_id for item in state.items(status="submitted")} == {"a", "b"}


def test_a_state_of_other_settings_with_batches_pending_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with BatchState(path, run_id="r1") as state:
        state.record_intent("m", 1, ["a"])
    with pytest.raises(UsageError, match="another run"):
        BatchState(path, run_id="r2")


def test_a_file_that_is_not_a_batch_state_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_text("not a database\n" * 100)
    with pytest.raises(UsageError, match="not a batch state file"):
        BatchState(path)


def test_the_state_commits_synchronously(tmp_path: Path) -> None:
    with BatchState(tmp_path / "s.sqlite3") as state:
        state.record_intent("m", 1, ["a"])
        # Visible to another connection at once: committed, not held in a transaction.
        other = sqlite3.connect(tmp_path / "s.sqlite3")
        assert other.execute("SELECT COUNT(*) FROM intents").fetchone() == (1,)
        other.close()


async def test_an_in_memory_batch_of_an_ended_process_counts_as_expired(tmp_path: Path) -> None:
    earlier = OfflineModel()  # the offline model's batches live in the instance that made them
    encoded = await earlier.batch_encode(
        BatchRequest(custom_id="a", messages=[ModelRequest(parts=[UserPromptPart("hello")])])
    )
    batch = await earlier.batch_create([encoded])
    with BatchState(tmp_path / "s.sqlite3") as state:
        intent = state.record_intent("offline", 1, ["a"])
        state.record_batch(
            intent,
            batch_id=batch.id,
            provider=batch.provider_name,
            status="in_progress",
            handle=handle_json(batch),
            items=[Submitted("a", "descriptions", "S1")],
        )
        coordinator = BatchCoordinator(state)
        coordinator.register("offline", OfflineModel())  # a later process: another instance
        assert await coordinator.poll() == 0
        row = state.item("a")
        assert row is not None
        assert row.status == "expired"
        assert coordinator.may_resubmit(row)
