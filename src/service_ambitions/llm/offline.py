"""The built-in ``offline`` model: deterministic, schema-valid, plausible answers without a network.

It is a pydantic-ai ``FunctionModel`` that reads the prompt it is given (the labelled JSON lines of
the stage templates and the plateau text of the system prompt) and writes an answer from it:
descriptions from the plateau text, features from the service's jobs to be done for each role,
and mappings by lexical similarity between features and catalogue items, with required facets
filled. It is honest about what it is: its model name is ``offline`` and output headers say
``synthetic``. Optional latency lets the benchmark simulate a real provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from service_ambitions.domain.responses import CMMI_LABELS
from service_ambitions.llm._names import OFFLINE_MODEL_NAME, is_offline

__all__ = ["OFFLINE_MODEL_NAME", "OfflineModel", "is_offline"]
_LABEL = re.compile(r"^([A-Z_]+): (.*)$", re.MULTILINE)
_PLATEAU_TEXT = re.compile(r"^(\d+)\. \*\*(.+?)\*\*\n\s+- Core idea: (.+)$", re.MULTILINE)
_WORD = re.compile(r"[a-z][a-z0-9]+")
_STOPWORD_TEXT = (
    "about across after also and any are based been before being both but can each every for from have "
    "into its more most much must not now only other our out over own same should such than that the "
    "their them then there these they this those through too under until use used using very via was "
    "were what when where which while who whom why will with within without would you your able make "
    "makes made need needs get gets want wants find help helps support supports service services "
    "students staff student university new"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_STAGE_STYLE = {
    1: ("Online", "a consistent digital channel with clear, published steps"),
    2: ("Guided", "guided, personalised journeys that anticipate common questions"),
    3: ("Automated", "automated handling that resolves routine cases without manual work"),
    4: ("Outcome-tracked", "measures of outcomes that steer the service as it runs"),
    5: ("Reimagined", "a redesigned experience that joins up partners and the wider institution"),
}


def _stable(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest(), "big")


def _stem(word: str) -> str:
    for suffix in ("ations", "ation", "ings", "ing", "ies", "ied", "es", "ed", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _terms(text: str) -> frozenset[str]:
    return frozenset(_stem(word) for word in _WORD.findall(text.lower()) if word not in _STOPWORDS)


_PRONOUNS = {
    "i": "they",
    "my": "their",
    "me": "them",
    "i'm": "they are",
    "mine": "theirs",
    "myself": "themselves",
}


def _lower_first(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else text


def _third_person(text: str) -> str:
    """``find out whether I can get my offer`` → ``find out whether they can get their offer``."""
    return " ".join(_PRONOUNS.get(word.lower(), word) for word in text.split(" "))


class _Prompt:
    """The labelled data of one request.

    Labels are found wherever they are in the user message (``LABEL: value`` lines, in any order):
    the stage templates put the fixed ones first and ``SERVICE_CONTEXT`` and the per-plateau ones
    last. A user message sent in parts (text around a cache point) is read as its joined text.
    """

    def __init__(self, messages: list[ModelMessage]) -> None:
        self.system = ""
        self.user = ""
        for message in messages:
            if isinstance(message, ModelRequest):
                for part in message.parts:
                    if isinstance(part, SystemPromptPart):
                        self.system = part.content
                    elif isinstance(part, UserPromptPart) and isinstance(part.content, str):
                        self.user = part.content
                    elif isinstance(part, UserPromptPart):
                        self.user = "".join(item for item in part.content if isinstance(item, str))
        self.labels: dict[str, str] = {match.group(1): match.group(2) for match in _LABEL.finditer(self.user)}

    def json(self, label: str, default: Any = None) -> Any:
        raw = self.labels.get(label)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw


class OfflineModel(FunctionModel):
    """A deterministic synthetic model; see the module docstring."""

    def __init__(self, *, latency_ms: float = 0.0, jitter_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self._catalogue_terms: dict[str, list[tuple[str, frozenset[str], frozenset[str]]]] = {}
        self.cpu_seconds = 0.0
        """CPU time spent writing answers (the benchmark subtracts it to isolate our own overhead)."""
        super().__init__(self._answer, model_name=OFFLINE_MODEL_NAME)

    async def _answer(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        started = time.thread_time()
        prompt = _Prompt(messages)
        if "CATALOGUE" in prompt.labels:
            answer = self._mapping(prompt)
        elif "ROLES" in prompt.labels:
            answer = self._features(prompt)
        elif "PLATEAUS" in prompt.labels:
            answer = self._descriptions(prompt)
        else:
            answer = {}
        usage = RequestUsage(
            input_tokens=(len(prompt.system) + len(prompt.user)) // 4,
            output_tokens=len(json.dumps(answer)) // 4,
        )
        if info.output_tools:
            part: ToolCallPart | TextPart = ToolCallPart(info.output_tools[0].name, answer)
        else:
            part = TextPart(json.dumps(answer))
        self.cpu_seconds += time.thread_time() - started
        if self.latency_ms or self.jitter_ms:
            jitter = (_stable(prompt.user) % 1000) / 1000 * self.jitter_ms if self.jitter_ms else 0.0
            await asyncio.sleep((self.latency_ms + jitter) / 1000)
        return ModelResponse(parts=[part], usage=usage, model_name=OFFLINE_MODEL_NAME)

    # descriptions -----------------------------------------------------------------------------
    def _descriptions(self, prompt: _Prompt) -> dict[str, Any]:
        service = prompt.json("SERVICE_CONTEXT", {}) or {}
        core = {match.group(2): match.group(3).strip() for match in _PLATEAU_TEXT.finditer(prompt.system)}
        name = service.get("name", "The service")
        jobs = [
            _third_person(_lower_first(job.get("name", ""))) for job in service.get("jobs_to_be_done", [])
        ]
        answers = []
        for entry in prompt.json("PLATEAUS", []) or []:
            level, plateau_name = int(entry["plateau"]), str(entry["plateau_name"])
            _, style = _STAGE_STYLE.get(level, _STAGE_STYLE[5])
            idea = core.get(plateau_name, "")
            text = f"At the {plateau_name} plateau, {name} offers {style}."
            if idea:
                text += f" {idea}"
            if jobs:
                chosen = jobs[(level - 1) % len(jobs) :] + jobs[: (level - 1) % len(jobs)]
                text += f" People can {'; '.join(chosen[:3])}."
            answers.append({"plateau": level, "plateau_name": plateau_name, "description": text})
        return {"descriptions": answers}

    # features ---------------------------------------------------------------------------------
    def _features(self, prompt: _Prompt) -> dict[str, Any]:
        service = prompt.json("SERVICE_CONTEXT", {}) or {}
        level_text = prompt.labels.get("PLATEAU", "1").split(" ", 1)
        level = int(level_text[0]) if level_text[0].isdigit() else 1
        plateau_name = level_text[1] if len(level_text) > 1 else ""
        prefix, style = _STAGE_STYLE.get(level, _STAGE_STYLE[5])
        score_level = max(1, min(5, level))
        jobs = service.get("jobs_to_be_done", [])
        features: dict[str, list[dict[str, Any]]] = {}
        for role in prompt.json("ROLES", []) or []:
            role_id = role["role_id"]
            mine = [
                job for job in jobs if any(r.get("role_id") == role_id for r in job.get("role", []) or [])
            ]
            chosen = mine or [job for job in jobs if not job.get("role")] or jobs
            names = [_third_person(_lower_first(job.get("name", ""))) for job in chosen[:3]] or [
                f"use {service.get('name', 'the service')}"
            ]
            features[role_id] = [
                {
                    "name": f"{prefix}: {job}",
                    "description": (
                        f"{role['name']} can {job} through {style}, as part of "
                        f"{service.get('name', 'the service')} at the {plateau_name} plateau."
                    ),
                    "score": {
                        "level": score_level,
                        "label": CMMI_LABELS[score_level],
                        "justification": (
                            f"Processes behind this feature are expected to be "
                            f"{CMMI_LABELS[score_level].lower()} at the {plateau_name} plateau."
                        ),
                    },
                }
                for job in names
            ]
        return {"features": features}

    # mapping ----------------------------------------------------------------------------------
    def _catalogue(self, raw: str) -> list[tuple[str, frozenset[str], frozenset[str]]]:
        key = hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()
        cached = self._catalogue_terms.get(key)
        if cached is None:
            items = json.loads(raw)
            cached = [(item["id"], _terms(item["name"]), _terms(item["description"])) for item in items]
            if len(self._catalogue_terms) > 64:
                self._catalogue_terms.clear()
            self._catalogue_terms[key] = cached
        return cached

    def _mapping(self, prompt: _Prompt) -> dict[str, Any]:
        field = prompt.labels.get("FIELD", "items").strip()
        catalogue = self._catalogue(prompt.labels.get("CATALOGUE", "[]"))
        facets = prompt.json("FACETS", []) or []
        service = prompt.json("SERVICE_CONTEXT", {}) or {}
        context_terms = _terms(f"{service.get('name', '')} {service.get('description', '')}")
        level_text = prompt.labels.get("PLATEAU", "1").split(" ", 1)[0]
        level = int(level_text) if level_text.isdigit() else 1
        answers = []
        for feature in prompt.json("FEATURES", []) or []:
            terms = _terms(f"{feature.get('name', '')} {feature.get('description', '')}")
            ranked = sorted(
                (
                    -(3 * len(terms & name) + len(terms & desc) + len(context_terms & (name | desc))),
                    _stable(feature["id"], item_id) % 997,
                    item_id,
                )
                for item_id, name, desc in catalogue
            )
            chosen = [item_id for score, _, item_id in ranked[:2] if score < 0] or [ranked[0][2]]
            contributions = []
            for item_id in chosen:
                entry: dict[str, Any] = {"item": item_id}
                if facets:
                    entry["facets"] = self._facets(facets, feature["id"], item_id, level)
                contributions.append(entry)
            answers.append({"feature_id": feature["id"], "mappings": {field: contributions}})
        return {"features": answers}

    @staticmethod
    def _facets(facets: list[dict[str, Any]], feature_id: str, item_id: str, level: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for facet in facets:
            if not facet.get("required"):
                continue
            kind = facet.get("type")
            if kind == "enum":
                options = [option["id"] for option in facet.get("options") or []]
                values[facet["id"]] = options[_stable(feature_id, item_id, facet["id"]) % len(options)]
            elif kind == "integer":
                values[facet["id"]] = level
            elif kind == "number":
                values[facet["id"]] = round(level / 5, 2)
            elif kind == "boolean":
                values[facet["id"]] = level >= 3
            else:
                values[facet["id"]] = f"Needed for feature {feature_id}"
        return values
