"""The fake server's OpenAI Batch API, through the real ``openai`` SDK and pydantic-ai's batch methods."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any, Literal

import openai
import pytest
from pydantic import BaseModel
from pydantic_ai.direct import model_request_batch
from pydantic_ai.exceptions import ModelAPIError, ModelHTTPError
from pydantic_ai.messages import ModelRequest, ModelResponse, SystemPromptPart, ToolCallPart, UserPromptPart
from pydantic_ai.models import ModelRequestParameters, override_allow_model_requests
from pydantic_ai.models.batch import BatchRequest, EncodedBatchRequest
from pydantic_ai.models.openai import OpenAIResponsesModel
from pydantic_ai.profiles.openai import OpenAIModelProfile
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.tools import ToolDefinition

from service_ambitions.domain.responses import features_response_model
from service_ambitions.testing.openai_server import BatchItem, Behaviour, FakeOpenAIServer

SYSTEM = "You are a service designer."
USER = 'ROLES: [{"role_id": "learners", "name": "Learners"}]\nPLATEAU: 1 Foundational\nSERVICE_CONTEXT: {}'
FEATURES = features_response_model(["learners"])
POLL = timedelta(milliseconds=10)
Endpoint = Literal["/v1/responses", "/v1/chat/completions"]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def allow_model_requests() -> Iterator[None]:
    with override_allow_model_requests(True):
        yield


def body(endpoint: Endpoint = "/v1/responses", model: str = "gpt-5-mini") -> dict[str, Any]:
    """A features request in the API of ``endpoint``, forcing the output tool."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
    if endpoint == "/v1/chat/completions":
        tool = {"type": "function", "function": {"name": "final_result", "parameters": {}}}
        return {"model": model, "messages": messages, "tools": [tool], "tool_choice": "required"}
    tool = {"type": "function", "name": "final_result", "parameters": {}}
    return {"model": model, "input": messages, "tools": [tool], "tool_choice": "required"}


def jsonl(custom_ids: list[str], endpoint: Endpoint = "/v1/responses") -> bytes:
    lines = [
        {"custom_id": each, "method": "POST", "url": endpoint, "body": body(endpoint)} for each in custom_ids
    ]
    return "\n".join(json.dumps(line) for line in lines).encode()


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    """``client_for(server)``: an SDK client on the server (closed at the end), no SDK retries."""
    clients: list[openai.AsyncOpenAI] = []

    def make(server: FakeOpenAIServer) -> openai.AsyncOpenAI:
        clients.append(openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def submit(
    client: openai.AsyncOpenAI, custom_ids: list[str], endpoint: Endpoint = "/v1/responses"
) -> Any:
    file = await client.files.create(file=("batch.jsonl", jsonl(custom_ids, endpoint)), purpose="batch")
    return await client.batches.create(
        input_file_id=file.id, endpoint=endpoint, completion_window="24h", metadata={"run": "r1"}
    )


async def lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await client.files.content(file_id)).text.splitlines()]


def features_of(answer: dict[str, Any]) -> BaseModel:
    """The features answer in a Responses or Chat Completions body, validated as the pipeline does."""
    if answer["object"] == "chat.completion":
        arguments = answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    else:
        arguments = answer["output"][0]["arguments"]
    return FEATURES.model_validate_json(arguments)


# the openai SDK ------------------------------------------------------------------------------
async def test_files_upload_read_and_delete(client_for: Any) -> None:
    with FakeOpenAIServer() as server:
        client = client_for(server)
        data = jsonl(["a", "b"])
        file = await client.files.create(file=("requests.jsonl", data), purpose="batch")
        again = await client.files.retrieve(file.id)
        content = (await client.files.content(file.id)).content
        deleted = await client.files.delete(file.id)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(file.id)
        with pytest.raises(openai.BadRequestError, match="purpose"):
            await client.files.create(file=("x.jsonl", data), purpose="nonsense")
    assert (file.object, file.filename, file.purpose, file.bytes) == (
        "file",
        "requests.jsonl",
        "batch",
        len(data),
    )
    assert again == file
    assert content == data
    assert (deleted.id, deleted.deleted) == (file.id, True)
    assert (server.batch_counters.files_uploaded, server.batch_counters.files_deleted) == (1, 1)
    upload = server.requests[0]
    assert (upload.method, upload.path) == ("POST", "/v1/files")
    assert upload.body == {"purpose": "batch", "file": {"filename": "requests.jsonl", "bytes": len(data)}}
    assert server.chat_requests() == []
    assert server.errors == []


@pytest.mark.parametrize("endpoint", ["/v1/responses", "/v1/chat/completions"])
async def test_batch_runs_over_its_delay_and_answers_like_live_requests(
    client_for: Any, endpoint: Endpoint
) -> None:
    clock = FakeClock()
    with FakeOpenAIServer(Behaviour(batch_delay=10, clock=clock)) as server:
        client = client_for(server)
        created = await submit(client, ["a", "b", "c", "d"], endpoint)
        started = await client.batches.retrieve(created.id)
        clock.now += 5
        halfway = await client.batches.retrieve(created.id)
        clock.now += 5
        done = await client.batches.retrieve(created.id)
        output = await lines(client, done.output_file_id)
        live = await client.post(endpoint.removeprefix("/v1"), body=body(endpoint), cast_to=object)
    assert (created.status, created.request_counts and created.request_counts.total) == ("validating", 0)
    assert created.metadata == {"run": "r1"}
    assert started.status == halfway.status == "in_progress"
    assert started.request_counts is not None
    assert halfway.request_counts is not None
    assert (started.request_counts.total, started.request_counts.completed) == (4, 0)
    assert halfway.request_counts.completed == 2
    assert done.status == "completed"
    assert (done.endpoint, done.model, done.metadata, done.error_file_id) == (
        endpoint,
        "gpt-5-mini",
        {"run": "r1"},
        None,
    )
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed, done.request_counts.total) == (4, 0, 4)
    assert done.created_at <= (done.in_progress_at or 0) <= (done.completed_at or 0) == done.created_at + 10
    assert [line["custom_id"] for line in output] == ["a", "b", "c", "d"]
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
    assert all(line["id"].startswith("batch_req_") and line["response"]["request_id"] for line in output)
    answers = [line["response"]["body"] for line in output]
    assert [features_of(answer) for answer in answers] == [features_of(live)] * 4  # as a live request
    usage_key = "prompt_tokens" if endpoint.endswith("completions") else "input_tokens"
    assert answers[0]["usage"][usage_key] == live["usage"][usage_key] > 0
    assert done.usage is not None
    assert done.usage.input_tokens == 4 * live["usage"][usage_key]
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert len({answer["id"] for answer in answers} | {live["id"]}) == 5
    assert server.counters.requests == 1  # batch requests are not live ones
    assert server.batch_counters.items_answered == 4
    (record,) = server.batch_records()
    assert (record.custom_ids, record.answered, record.status) == (("a", "b", "c", "d"),) * 2 + ("completed",)
    assert record.bodies[0] == body(endpoint)
    assert server.errors == []


async def test_delay_zero_completes_on_the_first_look(client_for: Any) -> None:
    with FakeOpenAIServer(Behaviour(clock=FakeClock())) as server:
        client = client_for(server)
        created = await submit(client, ["a"])
        done = await client.batches.retrieve(created.id)
    assert (created.status, done.status) == ("validating", "completed")
    assert server.batch_counters.batches_completed == 1


async def test_item_failures_are_error_file_lines_with_the_status(client_for: Any) -> None:
    failures = {"b": "500", "d": "400"}
    with FakeOpenAIServer(Behaviour(batch_item_failures=failures)) as server:
        client = client_for(server)
        created = await submit(client, ["a", "b", "c", "d"])
        done = await client.batches.retrieve(created.id)
        output = await lines(client, done.output_file_id)
        errors = await lines(client, done.error_file_id)
    assert [line["custom_id"] for line in output] == ["a", "c"]
    assert [(line["custom_id"], line["response"]["status_code"]) for line in errors] == [
        ("b", 500),
        ("d", 400),
    ]
    assert errors[0]["response"]["body"]["error"]["type"] == "server_error"
    assert errors[1]["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert all(line["error"] is None for line in errors)  # a request's own error is in its response
    assert done.request_counts is not None
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 2, 2)
    assert server.batch_counters.items_failed == 2


async def test_item_failure_rule_sees_the_item(client_for: Any) -> None:
    seen: list[BatchItem] = []

    def every_second(item: BatchItem) -> str:
        seen.append(item)
        return "429" if item.number % 2 == 0 else "truncated" if item.number == 3 else "ok"

    with FakeOpenAIServer(Behaviour(batch_item_failures=every_second)) as server:
        client = client_for(server)
        first = await client.batches.retrieve((await submit(client, ["a", "b", "c"])).id)
        second = await client.batches.retrieve((await submit(client, ["a"])).id)
        output = await lines(client, first.output_file_id)
        errors = await lines(client, first.error_file_id) + await lines(client, second.error_file_id)
    assert [(item.number, item.custom_id, item.line, item.attempt) for item in seen] == [
        (1, "a", 1, 1),
        (2, "b", 2, 1),
        (3, "c", 3, 1),
        (4, "a", 1, 2),
    ]
    assert {item.batch_id for item in seen} == {first.id, second.id}
    assert [(line["custom_id"], line["response"]["status_code"]) for line in errors] == [
        ("b", 429),
        ("a", 429),
    ]
    truncated = output[1]["response"]["body"]
    assert (output[1]["custom_id"], truncated["status"]) == ("c", "incomplete")


async def test_cancel_keeps_what_ran_and_cancels_the_rest(client_for: Any) -> None:
    clock = FakeClock()
    with FakeOpenAIServer(Behaviour(batch_delay=10, clock=clock)) as server:
        client = client_for(server)
        created = await submit(client, ["a", "b", "c", "d"])
        clock.now += 5  # half the requests are due
        cancelling = await client.batches.cancel(created.id)
        cancelled = await client.batches.retrieve(created.id)
        output = await lines(client, cancelled.output_file_id)
        errors = await lines(client, cancelled.error_file_id)
        with pytest.raises(openai.ConflictError, match="cancelled"):
            await client.batches.cancel(created.id)
    assert (cancelling.status, cancelled.status) == ("cancelling", "cancelled")
    assert cancelling.cancelling_at is not None
    assert cancelled.cancelled_at is not None
    assert [line["custom_id"] for line in output] == ["a", "b"]
    assert [(line["custom_id"], line["response"], line["error"]["code"]) for line in errors] == [
        ("c", None, "batch_cancelled"),
        ("d", None, "batch_cancelled"),
    ]
    counters = server.batch_counters
    assert (counters.cancels, counters.batches_cancelled, counters.items_cancelled) == (1, 1, 2)
    assert counters.items_answered == 2


@pytest.mark.parametrize(("expire", "ran"), [(1, 0), (lambda number, requests: requests - 1, 2)])
async def test_expired_batch_lists_unrun_requests_as_expired(client_for: Any, expire: Any, ran: int) -> None:
    clock = FakeClock()
    with FakeOpenAIServer(Behaviour(batch_delay=10, batch_expire=expire, clock=clock)) as server:
        client = client_for(server)
        created = await submit(client, ["a", "b", "c"])
        clock.now += 9
        running = await client.batches.retrieve(created.id)
        clock.now += 1
        expired = await client.batches.retrieve(created.id)
        output = await lines(client, expired.output_file_id)
        errors = await lines(client, expired.error_file_id)
        if expire == 1:  # only the first batch expires
            later = await client.batches.retrieve((await submit(client, ["a"])).id)
            assert later.status == "in_progress"
    assert running.status == "in_progress"
    assert expired.status == "expired"
    assert expired.expired_at == expired.created_at + 10
    assert [line["custom_id"] for line in output] == ["a", "b", "c"][:ran]
    assert [line["error"]["code"] for line in errors] == ["batch_expired"] * (3 - ran)
    assert (server.batch_counters.batches_expired, server.batch_counters.items_expired) == (1, 3 - ran)


async def test_concurrent_looks_run_each_request_once(client_for: Any) -> None:
    with FakeOpenAIServer() as server:
        client = client_for(server)
        created = await submit(client, [f"r{index}" for index in range(10)])
        async with asyncio.TaskGroup() as group:
            looks = [group.create_task(client.batches.retrieve(created.id)) for _ in range(8)]
        output = await lines(client, looks[0].result().output_file_id)
    assert {(look.result().status, look.result().output_file_id) for look in looks} == {
        ("completed", looks[0].result().output_file_id)
    }
    assert sorted(line["custom_id"] for line in output) == sorted(f"r{index}" for index in range(10))
    assert server.batch_counters.items_answered == 10
    assert server.batch_counters.batches_completed == 1
    assert server.errors == []


async def test_a_stalled_create_leaves_a_batch_the_client_has_no_id_for(client_for: Any) -> None:
    with FakeOpenAIServer(Behaviour(batch_create_stall=30, batch_delay=30)) as server:
        client = client_for(server)
        file = await client.files.create(file=("batch.jsonl", jsonl(["a"])), purpose="batch")
        with pytest.raises(openai.APITimeoutError):
            await client.with_options(timeout=0.2).batches.create(
                input_file_id=file.id, endpoint="/v1/responses", completion_window="24h", metadata={"k": "v"}
            )
        (listed,) = (await client.batches.list()).data  # what a client adopting it finds
        server.behaviour.batch_delay = 0  # knobs are read on every look
        done = await client.batches.retrieve(listed.id)
    assert (listed.status, listed.metadata, listed.input_file_id) == ("in_progress", {"k": "v"}, file.id)
    assert done.status == "completed"
    assert [record.id for record in server.batch_records()] == [listed.id]
    assert server.errors == []


async def test_list_is_newest_first_with_cursor_pagination(client_for: Any) -> None:
    with FakeOpenAIServer() as server:
        client = client_for(server)
        created = [(await submit(client, [f"r{index}"])).id for index in range(5)]
        page = await client.batches.list(limit=2)
        after = await client.batches.list(limit=2, after=page.data[-1].id)
        everything = [batch.id async for batch in client.batches.list(limit=2)]
        with pytest.raises(openai.BadRequestError):
            await client.batches.list(limit=101)
    newest = created[::-1]
    assert [batch.id for batch in page.data] == newest[:2]
    assert (page.has_more, page.first_id, page.last_id) == (True, newest[0], newest[1])
    assert [batch.id for batch in after.data] == newest[2:4]
    assert everything == newest
    assert {batch.status for batch in page.data} == {"completed"}  # listing is a look too


async def test_invalid_input_file_fails_the_batch_with_line_errors(client_for: Any) -> None:
    requests = [json.loads(line) for line in jsonl(["a", "b", "a", "c"]).decode().splitlines()]
    requests[3]["url"] = "/v1/chat/completions"
    data = "\n".join([*map(json.dumps, requests), "not json"]).encode()
    with FakeOpenAIServer() as server:
        client = client_for(server)
        file = await client.files.create(file=("batch.jsonl", data), purpose="batch")
        created = await client.batches.create(
            input_file_id=file.id, endpoint="/v1/responses", completion_window="24h"
        )
        failed = await client.batches.retrieve(created.id)
    assert failed.status == "failed"
    assert failed.failed_at is not None
    assert (failed.output_file_id, failed.error_file_id) == (None, None)
    assert failed.errors is not None
    assert failed.errors.data is not None
    assert [(error.code, error.line) for error in failed.errors.data] == [
        ("duplicate_custom_id", 3),
        ("invalid_url", 4),
        ("invalid_json_line", 5),
    ]
    assert server.batch_counters.batches_failed == 1
    assert server.batch_counters.items_answered == 0
    assert server.batch_records()[0].custom_ids == ("a", "b", "a", "c")


async def test_batches_the_api_refuses_at_once(client_for: Any) -> None:
    with FakeOpenAIServer() as server:
        client = client_for(server)
        data = jsonl(["a"])
        batch_file = await client.files.create(file=("batch.jsonl", data), purpose="batch")
        other_file = await client.files.create(file=("other.jsonl", data), purpose="user_data")
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/responses", completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            await client.batches.create(
                input_file_id=batch_file.id, endpoint="/v1/embeddings", completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError, match="purpose"):
            await client.batches.create(
                input_file_id=other_file.id, endpoint="/v1/responses", completion_window="24h"
            )
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_nope")
    assert server.batch_counters.batches_created == 0


async def test_without_the_batch_api_the_endpoints_are_missing(client_for: Any) -> None:
    with FakeOpenAIServer(Behaviour(batch_api=False)) as server:
        client = client_for(server)
        with pytest.raises(openai.NotFoundError):
            await client.files.create(file=("batch.jsonl", jsonl(["a"])), purpose="batch")
        with pytest.raises(openai.NotFoundError):
            await client.batches.list()


def test_batch_requests_cannot_have_connection_faults() -> None:
    item = BatchItem(number=1, custom_id="a", batch_id="batch_1", line=1, attempt=1)
    assert Behaviour(batch_item_failures={"a": "503"}).batch_fault(item) == "503"
    assert Behaviour(batch_item_failures=lambda _item: "quota").batch_fault(item) == "quota"
    with pytest.raises(ValueError, match="stall"):
        Behaviour(batch_item_failures={"a": "stall"}).batch_fault(item)


# pydantic-ai -------------------------------------------------------------------------------------
def model_on(server: FakeOpenAIServer) -> OpenAIResponsesModel:
    provider = OpenAIProvider(base_url=server.base_url, api_key="sk-test")
    return OpenAIResponsesModel(
        "gpt-5-mini", provider=provider, profile=OpenAIModelProfile(openai_supports_batch_api=True)
    )


def request(custom_id: str) -> BatchRequest:
    output_tool = ToolDefinition(
        name="final_result", parameters_json_schema=FEATURES.model_json_schema(), kind="output"
    )
    return BatchRequest(
        custom_id=custom_id,
        messages=[ModelRequest(parts=[SystemPromptPart(SYSTEM), UserPromptPart(USER)])],
        model_request_parameters=ModelRequestParameters(
            output_mode="tool", output_tools=[output_tool], allow_text_output=False
        ),
    )


def assert_valid(response: ModelResponse | ModelAPIError) -> None:
    """A features answer the pipeline accepts, priced as a batch."""
    assert isinstance(response, ModelResponse), response
    (part,) = response.parts
    assert isinstance(part, ToolCallPart)
    assert part.tool_name == "final_result"
    assert (
        "learners"
        in FEATURES.model_validate_json(part.args_as_json_str()).model_dump(by_alias=True)["features"]
    )
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert (response.provider_details or {}).get("processing") == "batch"


def submitted(server: FakeOpenAIServer) -> list[tuple[str, ...]]:
    return [record.custom_ids for record in server.batch_records()]


async def run_batch(server: FakeOpenAIServer, custom_ids: list[str], **options: Any) -> list[Any]:
    model = model_on(server)
    try:
        return await model_request_batch(
            model,
            [request(each) for each in custom_ids],
            poll_interval=POLL,
            max_poll_interval=POLL,
            **options,
        )
    finally:
        await model.client.close()


async def test_model_request_batch_with_a_delay() -> None:
    with FakeOpenAIServer(Behaviour(batch_delay=0.3)) as server:
        responses = await run_batch(server, ["a", "b", "c"])
    for response in responses:
        assert_valid(response)
    assert submitted(server) == [("a", "b", "c")]
    counters = server.batch_counters
    assert (counters.files_uploaded, counters.batches_created, counters.batches_completed) == (1, 1, 1)
    assert counters.files_deleted == 1  # every request ran, so pydantic-ai deletes the input file
    assert server.batch_records()[0].input_file_id in {
        request.path.split("/")[-1] for request in server.requests if request.method == "DELETE"
    }
    assert server.errors == []


@pytest.mark.parametrize(
    ("expire", "resubmitted"),
    [(1, ("a", "b", "c")), (lambda number, _requests: 1 if number == 1 else None, ("b", "c"))],
)
async def test_expired_requests_are_resubmitted(expire: Any, resubmitted: tuple[str, ...]) -> None:
    with FakeOpenAIServer(Behaviour(batch_expire=expire)) as server:
        responses = await run_batch(server, ["a", "b", "c"])
    for response in responses:
        assert_valid(response)
    assert submitted(server) == [("a", "b", "c"), resubmitted]
    answered = [custom_id for record in server.batch_records() for custom_id in record.answered]
    assert sorted(answered) == ["a", "b", "c"]  # each request ran exactly once
    assert [record.status for record in server.batch_records()] == ["expired", "completed"]


async def test_expiring_every_time_gives_up_after_the_resubmissions() -> None:
    with FakeOpenAIServer(Behaviour(batch_expire=99)) as server:
        responses = await run_batch(server, ["a", "b"], max_resubmissions=1)
    assert all(isinstance(response, ModelAPIError) and "expired" in str(response) for response in responses)
    assert submitted(server) == [("a", "b"), ("a", "b")]
    assert server.batch_counters.items_answered == 0


async def test_per_request_failures() -> None:
    def failures(item: BatchItem) -> str:
        if item.custom_id == "b":
            return "400"  # the request's own fault: not resubmitted
        return "500" if item.custom_id == "c" and item.attempt == 1 else "ok"  # transient: resubmitted

    with FakeOpenAIServer(Behaviour(batch_item_failures=failures)) as server:
        a, b, c = await run_batch(server, ["a", "b", "c"])
    assert_valid(a)
    assert_valid(c)
    assert isinstance(b, ModelHTTPError)
    assert b.status_code == 400
    assert submitted(server) == [("a", "b", "c"), ("c",)]
    custom_ids = [custom_id for batch in submitted(server) for custom_id in batch]
    assert len(custom_ids) == len(set(custom_ids)) + 1  # only "c" went twice
    assert server.batch_counters.items_failed == 2


async def test_low_level_batch_loop_with_the_servers_clock() -> None:
    clock = FakeClock()
    with FakeOpenAIServer(Behaviour(batch_delay=30, clock=clock)) as server:
        model = model_on(server)
        requests = [request(each) for each in ["a", "b"]]
        batch = await model.batch_create([await model.batch_encode(each) for each in requests])
        statuses = [batch.status]
        for _ in range(3):
            clock.now += 15
            batch = await model.batch_status(batch)
            statuses.append(batch.status)
            if batch.status == "ended":
                break
        results = {result.custom_id: result for result in await model.batch_results(batch)}
        await model.client.close()
    assert statuses == ["in_progress", "in_progress", "ended"]
    assert batch.request_count == 2
    assert (batch.provider_details or {})["status"] == "completed"
    for each in requests:
        assert results[each.custom_id].status == "succeeded"
        assert_valid(model.batch_decode(results[each.custom_id], each))


async def test_low_level_cancel() -> None:
    clock = FakeClock()
    with FakeOpenAIServer(Behaviour(batch_delay=10, clock=clock)) as server:
        model = model_on(server)
        requests = [request(each) for each in ["a", "b", "c", "d"]]
        batch = await model.batch_create([await model.batch_encode(each) for each in requests])
        clock.now += 3  # one request of four is due
        cancelling = await model.batch_cancel(batch)
        ended = await model.batch_status(cancelling)
        results = {result.custom_id: result for result in await model.batch_results(ended)}
        await model.client.close()
    assert (cancelling.status, ended.status) == ("canceling", "ended")
    assert [results[each].status for each in "abcd"] == ["succeeded", "canceled", "canceled", "canceled"]
    assert_valid(model.batch_decode(results["a"], requests[0]))
    with pytest.raises(ModelAPIError, match="canceled"):
        model.batch_decode(results["b"], requests[1])
    assert server.batch_counters.cancels == 1


async def test_low_level_duplicate_custom_ids_fail_validation() -> None:
    with FakeOpenAIServer() as server:
        model = model_on(server)
        encoded = await model.batch_encode(request("a"))
        other = await model.batch_encode(request("b"))
        duplicate = EncodedBatchRequest(custom_id="a", group=other.group, body=other.body)
        batch = await model.batch_status(await model.batch_create([encoded, other, duplicate]))
        results = await model.batch_results(batch)
        await model.client.close()
    assert (batch.status, (batch.provider_details or {})["status"]) == ("ended", "failed")
    assert (batch.provider_details or {})["errors"][0] | {"message": ""} == {
        "code": "duplicate_custom_id",
        "line": 3,
        "param": "custom_id",
        "message": "",
    }
    assert {result.status for result in results} == {"errored"}
    with pytest.raises(ModelHTTPError) as raised:
        model.batch_decode(results[0], request(results[0].custom_id))
    assert raised.value.status_code == 400
    assert server.batch_counters.items_answered == 0


# standalone --------------------------------------------------------------------------------------
def test_standalone_server_batch_flags() -> None:
    command = [sys.executable, "-m", "service_ambitions.testing.openai_server"]
    command += ["--batch-fail-every", "2", "--batch-fail-status", "503", "--batch-delay", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        with openai.OpenAI(base_url=process.stdout.readline().strip(), api_key="x", max_retries=0) as client:
            file = client.files.create(file=("batch.jsonl", jsonl(["a", "b", "c", "d"])), purpose="batch")
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/responses", completion_window="24h"
            )
            done = client.batches.retrieve(batch.id)
            assert done.error_file_id is not None
            errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert [(line["custom_id"], line["response"]["status_code"]) for line in errors] == [
        ("b", 503),
        ("d", 503),
    ]
    assert process.returncode == 0
    assert "Traceback" not in stderr


def test_standalone_server_rejects_unknown_batch_faults() -> None:
    command = [
        sys.executable,
        "-m",
        "service_ambitions.testing.openai_server",
        "--batch-fail-status",
        "reset",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "reset" in result.stderr
    assert "Traceback" not in result.stderr
