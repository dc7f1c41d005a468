"""OpenAI's wire formats for the fake server: Chat Completions and Responses requests and answers.

A request of either API is read into one :class:`Query`; the answer is written back in the API it
came in. The answer itself comes from the built-in offline model, so it is valid for every stage.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic_ai.messages import ModelRequest, SystemPromptPart, UserPromptPart
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.tools import ToolDefinition

__all__ = [
    "CHARS_PER_TOKEN",
    "CHAT_PATH",
    "RESPONSES_PATH",
    "STATUS_ERRORS",
    "Query",
    "error_body",
    "offline_answer",
    "render",
]

CHAT_PATH = "/v1/chat/completions"
CHARS_PER_TOKEN = 4
"""Token counts of the fake are characters ÷ 4."""
RESPONSES_PATH = "/v1/responses"
STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    402: ("Payment required: add credit to your account.", "insufficient_quota", "insufficient_quota"),
    403: ("You are not allowed to use this model.", "invalid_request_error", "unsupported_country"),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}
QUOTA_ERROR = (
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    "insufficient_quota",
)


def error_body(status: int, detail: tuple[str, str, str | None] | None = None) -> dict[str, Any]:
    """OpenAI's error body for ``status`` (or for the given message, type and code)."""
    message, kind, code = detail or STATUS_ERRORS.get(
        status, ("The server had an error.", "server_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _name(tool: Any) -> str | None:
    """A function tool's name in either API (``{"function": {"name"}}`` or ``{"name"}``)."""
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        return None
    name = tool.get("function", {}).get("name") if "function" in tool else tool.get("name")
    return str(name) if name else None


@dataclass(frozen=True)
class Query:
    """What a request asks, whichever API it came in."""

    api: str
    """``chat`` or ``responses``."""
    model: str
    system: tuple[str, ...]
    user: tuple[str, ...]
    tools: tuple[str, ...]
    tool_choice: Any
    format_type: str | None
    """``json_schema``, ``json_object``, ``text`` or ``None``."""
    max_tokens: int
    """The output cap in whichever field the request gave it (0: none)."""
    max_tokens_field: int = 0
    """The cap in ``max_tokens`` itself: the only field llama.cpp's server reads (0: none)."""

    @classmethod
    def parse(cls, path: str, body: dict[str, Any]) -> Query:
        """Read a request body of the API at ``path``."""
        system: list[str] = []
        user: list[str] = []
        if path == RESPONSES_PATH:
            items = body.get("input", [])
            items = [{"role": "user", "content": items}] if isinstance(items, str) else items
            if body.get("instructions"):
                system.append(str(body["instructions"]))
            response_format = (body.get("text") or {}).get("format") or {}
            max_tokens = body.get("max_output_tokens")
        else:
            items = body.get("messages", [])
            response_format = body.get("response_format") or {}
            max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        for item in items:
            role = item.get("role") if isinstance(item, dict) else None
            if role in {"system", "developer"}:
                system.append(_text(item.get("content")))
            elif role == "user":
                user.append(_text(item.get("content")))
        tools = tuple(name for name in map(_name, body.get("tools") or []) if name)
        return cls(
            api="responses" if path == RESPONSES_PATH else "chat",
            model=str(body.get("model", "gpt-5-mini")),
            system=tuple(system),
            user=tuple(user),
            tools=tools,
            tool_choice=body.get("tool_choice", "auto"),
            format_type=response_format.get("type"),
            max_tokens=int(max_tokens or 0),
            max_tokens_field=int(body.get("max_tokens") or 0) if path == CHAT_PATH else 0,
        )

    def cap(self, llama: bool) -> int:
        """The output cap the server honours (0: none); llama.cpp ignores ``max_completion_tokens``."""
        return self.max_tokens_field if llama else self.max_tokens

    @property
    def prompt(self) -> str:
        """All the prompt text, in order (its length / 4 is the prompt's token count)."""
        return "\n".join((*self.system, *self.user))

    def tool(self, llama: bool) -> str | None:
        """The tool to answer with, or ``None`` for text (llama.cpp only obeys a named tool)."""
        choice = self.tool_choice
        if not self.tools or choice == "none" or self.format_type in {"json_schema", "json_object"}:
            return None
        if isinstance(choice, dict):
            named = _name(choice.get("function", choice)) if choice.get("type") == "function" else None
            if named:
                return named
            allowed = choice.get("allowed_tools", choice)
            listed = [name for name in map(_name, allowed.get("tools") or []) if name]
            if llama or allowed.get("mode") == "none":
                return None
            return listed[0] if listed else self.tools[0]
        return None if llama else self.tools[0]


_RETRY_FEEDBACK = "<pyai:retry_feedback>"


def offline_answer(model: Model, query: Query, tool: str | None) -> str:
    """The offline model's answer: the output tool's JSON arguments, or JSON text."""
    parts: list[Any] = [SystemPromptPart(text) for text in query.system]
    # A re-ask repeats the task, then adds feedback on the rejected answer: like a model, the fake
    # answers the task again (the feedback alone names no task the offline model knows).
    parts += [UserPromptPart(text) for text in query.user if _RETRY_FEEDBACK not in text]
    parameters = ModelRequestParameters(
        output_mode="tool" if tool else "text",
        output_tools=[ToolDefinition(name=tool, kind="output")] if tool else [],
        allow_text_output=not tool,
    )
    response = asyncio.run(model.request([ModelRequest(parts=parts)], None, parameters))
    part = response.parts[0]
    args = getattr(part, "args", None)
    if args is not None:
        return args if isinstance(args, str) else json.dumps(args)
    return str(getattr(part, "content", ""))


def render(query: Query, number: int, tool: str | None, text: str, *, truncated: bool, cached: int) -> Any:
    """The answer to ``query`` in its API's format, with usage (prompt tokens ≈ characters / 4)."""
    prompt_tokens = len(query.prompt) // CHARS_PER_TOKEN
    completion_tokens = max(1, len(text) // CHARS_PER_TOKEN)
    call_id = f"call_{number}"
    if query.api == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else text}
        if tool:
            message["tool_calls"] = [
                {"id": call_id, "type": "function", "function": {"name": tool, "arguments": text}}
            ]
        finish = "length" if truncated else "tool_calls" if tool else "stop"
        return {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": query.model,
            "choices": [{"index": 0, "finish_reason": finish, "message": message, "logprobs": None}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }
    status = "incomplete" if truncated else "completed"
    if tool:
        item: dict[str, Any] = {"type": "function_call", "id": f"fc_{number}", "call_id": call_id}
        item |= {"name": tool, "arguments": text, "status": status}
    else:
        content = [{"type": "output_text", "text": text, "annotations": []}]
        item = {"type": "message", "id": f"msg_{number}", "role": "assistant", "status": status}
        item["content"] = content
    return {
        "id": f"resp_fake_{number}",
        "object": "response",
        "created_at": int(time.time()),
        "model": query.model,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "output": [item],
        "parallel_tool_calls": True,
        "tool_choice": query.tool_choice,
        "tools": [],
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
