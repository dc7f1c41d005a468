"""Redaction: precision on benign strings, recall of every built-in kind, logging filter, nested data."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pathlib
import random
import string
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import NoReturn

import pytest
from pydantic_ai.exceptions import ModelAPIError
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo, FunctionModel

from service_ambitions.cli._common import setup_logging
from service_ambitions.cli._summary import summary_data, write_summary
from service_ambitions.context import build_context
from service_ambitions.domain.ids import feature_id
from service_ambitions.engine.engine import ProcessingEngine
from service_ambitions.errors import ConfigError
from service_ambitions.llm.offline import OfflineModel
from service_ambitions.observability import PATTERNS_VARIABLE, RedactingFilter, Redactor
from service_ambitions.settings import load_settings
from tests.conftest import service, write_jsonl

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
RNG_SEED = 20240601


def throw(exc: Exception, cause: Exception | None = None) -> NoReturn:
    raise exc from cause


def caught(exc: Exception, cause: Exception | None = None) -> Exception:
    """``exc`` after a real raise: with a traceback, and chained to ``cause``."""
    try:
        throw(exc, cause)
    except Exception as error:
        return error


def chars(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


# --- precision -----------------------------------------------------------------------------------------

WORDS_TEXT = (
    "the service helps learners staff and researchers plan apply enrol pay track review approve their "
    "journey across plateaus with clear guidance a key stakeholder owns the roadmap token budget secret "
    "sauce password reset flow bearer of news authorization process schema output mapping feature "
    "capability catalogue maturity foundational enhanced experimental transformative data platform "
    "student finance library timetable assessment offer acceptance international postgraduate"
)
WORDS = WORDS_TEXT.split()
HOSTS = (
    "example.com",
    "api.example.org",
    "localhost:8080",
    "docs.python.org",
    "github.com",
    "127.0.0.1:9000",
)


def benign_sha(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def benign_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def benign_base64(rng: random.Random) -> str:
    blob = rng.randbytes(rng.randint(8, 120))
    return (base64.urlsafe_b64encode if rng.random() < 0.5 else base64.b64encode)(blob).decode()


def benign_service_id(rng: random.Random) -> str:
    area = rng.choice(("ADM", "FIN", "HR", "IT", "STU", "RES", "LIB"))
    return f"SVC-{area}-{rng.randint(1, 999):03d}"


def benign_feature_id(rng: random.Random) -> str:
    return feature_id(chars(rng, string.ascii_letters, 10), rng.choice(WORDS), rng.choice(WORDS))


def benign_date(rng: random.Random) -> str:
    moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 10**8))
    return moment.isoformat() if rng.random() < 0.5 else moment.date().isoformat()


def benign_prose(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize() + rng.choice((".", "!", "?", ": see below."))


def benign_path(rng: random.Random) -> str:
    parts = [rng.choice(WORDS) for _ in range(rng.randint(1, 5))]
    name = f"{rng.choice(WORDS)}_{rng.randint(0, 99)}.{rng.choice(('json', 'jsonl', 'py', 'md', 'yaml'))}"
    if rng.random() < 0.2:
        return "C:\\Users\\" + "\\".join([*parts, name])
    return "/" + "/".join([*parts, rng.randbytes(4).hex(), name])


def benign_url(rng: random.Random) -> str:
    scheme = rng.choice(("https", "http", "git+ssh", "postgresql", "redis"))
    user = rng.choice(("", "", "", "git@", "alice@"))
    path = "/".join(rng.choice(WORDS) for _ in range(rng.randint(0, 4)))
    query = f"?q={rng.choice(WORDS)}&page={rng.randint(1, 50)}" if rng.random() < 0.5 else ""
    return f"{scheme}://{user}{rng.choice(HOSTS)}/{path}{query}"


def benign_log_line(rng: random.Random) -> str:
    return (
        f"stage={rng.choice(('descriptions', 'features', 'mapping'))} service={benign_service_id(rng)} "
        f"model=openai:gpt-5-mini max_tokens={rng.randint(100, 9000)} input_tokens={rng.randint(1, 9999)} "
        f"token_count={rng.randint(1, 99)} cache_key={benign_sha(rng)} request_id={benign_uuid(rng)} "
        f"feature={benign_feature_id(rng)} at {benign_date(rng)}"
    )


BENIGN: tuple[Callable[[random.Random], str], ...] = (
    benign_sha,
    benign_uuid,
    benign_base64,
    benign_service_id,
    benign_feature_id,
    benign_date,
    benign_prose,
    benign_path,
    benign_url,
    benign_log_line,
)


def benign_strings(count: int, seed: int = RNG_SEED) -> list[str]:
    rng = random.Random(seed)
    return [BENIGN[index % len(BENIGN)](rng) for index in range(count)]


def test_benign_precision() -> None:
    redactor = Redactor.from_environment({})
    samples = benign_strings(5000)
    assert len(set(samples)) > 4500  # really 5,000 mostly distinct strings
    flagged = [(text, redactor.redact(text)) for text in samples if redactor.redact(text) != text]
    assert len(flagged) <= 5, flagged[:10]  # at most 0.1 %


# --- recall --------------------------------------------------------------------------------------------


def jwt(rng: random.Random) -> str:
    def segment(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    signature = base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")
    return f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment({'sub': chars(rng, ALNUM, 12)})}.{signature}"


def token_canaries(rng: random.Random) -> dict[str, list[str]]:
    """Keys recognisable on their own, by kind."""
    return {
        "openai": [
            f"sk-{chars(rng, ALNUM, 48)}",
            f"sk-proj-{chars(rng, URLSAFE, 80)}T3BlbkFJ{chars(rng, ALNUM, 20)}",
        ],
        "anthropic": [f"sk-ant-api03-{chars(rng, URLSAFE, 93)}AA"],
        "openrouter": [f"sk-or-v1-{rng.randbytes(32).hex()}"],
        "groq": [f"gsk_{chars(rng, ALNUM, 52)}"],
        "google": [f"AIza{chars(rng, URLSAFE, 35)}"],
        "aws": [f"AKIA{chars(rng, string.ascii_uppercase + string.digits, 16)}"],
        "github": [
            f"ghp_{chars(rng, ALNUM, 36)}",
            f"github_pat_{chars(rng, ALNUM, 22)}_{chars(rng, ALNUM, 59)}",
        ],
        "slack": [
            f"xoxb-{rng.randint(10**10, 10**11)}-{rng.randint(10**10, 10**11)}-{chars(rng, ALNUM, 24)}"
        ],
        "logfire": [f"pylf_v1_us_{chars(rng, ALNUM, 44)}"],
        "huggingface": [f"hf_{chars(rng, ALNUM, 34)}"],
        "jwt": [jwt(rng)],
    }


def traceback_with(secret: str) -> str:
    cause = caught(ConnectionError(f"POST https://api.example.com/v1 failed with key={secret}"))
    exc = caught(RuntimeError(f"provider rejected credentials {secret!r}"), cause)
    return "".join(traceback.format_exception(exc))


def contexts(secret: str) -> Iterator[str]:
    """The secret embedded in prose, JSON, a URL, headers and a traceback."""
    yield f"The provider rejected {secret} yesterday; please rotate it."
    yield json.dumps({"config": {"value": secret, "note": "from .env"}})
    yield json.dumps({"api_key": secret})
    yield json.dumps(json.dumps({"headers": {"x": secret}}))
    yield f"https://api.example.com/v1/models?key={secret}&page=2"
    yield f"X-Api-Key: {secret}\r\nAccept: application/json"
    yield f"Authorization: Bearer {secret}"
    yield traceback_with(secret)


def assert_hidden(redactor: Redactor, text: str, secret: str) -> str:
    out = redactor.redact(text)
    assert secret not in out, out
    assert secret[-10:] not in out, out  # no tail left behind
    assert "[REDACTED:" in out
    assert redactor.redact(out) == out  # idempotent: redacting twice is harmless
    return out


PEM_BODY = [base64.b64encode(random.Random(7).randbytes(48)).decode() for _ in range(5)]
PEM = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END RSA PRIVATE KEY-----"
MISTRAL = chars(random.Random(8), ALNUM, 32)
BEARER = f"{chars(random.Random(9), ALNUM, 30)}7.x_y"
BASIC = base64.b64encode(b"alice:correct horse battery staple").decode()

# (kind, text, secret) for the kinds that need a label or shape around them.
LABELLED: tuple[tuple[str, str, str], ...] = (
    ("private_key", f"loaded key:\n{PEM}\nand then continued", PEM_BODY[2]),
    ("private_key", json.dumps({"pem": PEM}), PEM_BODY[4]),
    ("private_key", f"truncated {PEM[:200]}", PEM_BODY[1][:40]),
    ("authorization", f"Authorization: Basic {BASIC}", BASIC),
    ("authorization", repr({"Authorization": f"Token {BEARER}"}), BEARER),
    ("authorization", json.dumps({"authorization": BEARER}), BEARER),
    ("bearer", f"retrying with Bearer {BEARER} after 429", BEARER),
    ("url_password", "postgresql://alice:S3cr3t-pa55w0rd@db.example.com:5432/app", "S3cr3t-pa55w0rd"),
    ("url_password", json.dumps({"dsn": "redis://:r3d1s-pa55-w0rd@cache:6379/0"}), "r3d1s-pa55-w0rd"),
    ("secret_field", "connect(host=db, password=hunter2-but-longer, port=5432)", "hunter2-but-longer"),
    ("secret_field", json.dumps({"client_secret": "two words secret value"}), "two words secret value"),
    ("secret_field", "db_passwd: 'quoted p4ss value'", "quoted p4ss value"),
    ("secret_field", "DB_PASSWORD=plain-env-style-value", "plain-env-style-value"),
    ("secret_field", "GET /cb?access_token=qwertyuiop12345&state=ok", "qwertyuiop12345"),
    (
        "secret_field",
        json.dumps(json.dumps({"refresh_token": "escaped-json-value-42"})),
        "escaped-json-value-42",
    ),
    ("api_key", f"MISTRAL key: {MISTRAL}", MISTRAL),
    ("api_key", f"invalid api key {MISTRAL} for mistral-large-latest", MISTRAL),
    ("api_key", f"x-api-key: {MISTRAL}", MISTRAL),
    ("api_key", traceback_with(f"key {MISTRAL}"), MISTRAL),
)

TOKEN_KINDS = sorted(token_canaries(random.Random(0)))
LABELLED_KINDS = sorted({kind for kind, _, _ in LABELLED})


@pytest.mark.parametrize("kind", TOKEN_KINDS + LABELLED_KINDS + ["env", "custom"])
def test_patterns_recall(kind: str) -> None:
    redactor = Redactor.from_environment(
        {
            "ACME_SERVICE_TOKEN": "plain env value 1234",
            "SA_OPENAI_API_KEY": "short-but-8",
            "LDAP_PASSWORD": "ldap!pass",
            "HOME_DIR": "/home/not-a-secret",
            PATTERNS_VARIABLE: r"ACME-\d{6}-[A-Z]{4};;internal ref (?P<secret>\w+)",
        }
    )
    if kind in TOKEN_KINDS:
        for secret in token_canaries(random.Random(RNG_SEED))[kind]:
            prose = assert_hidden(redactor, f"The provider rejected {secret} yesterday.", secret)
            assert prose == f"The provider rejected [REDACTED:{kind}] yesterday."
            for text in contexts(secret):
                assert_hidden(redactor, text, secret)
    elif kind == "env":
        for secret in ("plain env value 1234", "short-but-8", "ldap!pass"):
            for text in contexts(secret):
                assert_hidden(redactor, text, secret)
        assert redactor.redact("see /home/not-a-secret") == "see /home/not-a-secret"
    elif kind == "custom":
        assert redactor.redact("ticket ACME-123456-ABCD.") == "ticket [REDACTED:custom]."
        assert redactor.redact("an internal ref xyz123 here") == "an internal ref [REDACTED:custom] here"
    else:
        for labelled_kind, text, secret in LABELLED:
            if labelled_kind == kind:
                out = assert_hidden(redactor, text, secret)
                assert f"[REDACTED:{kind}]" in out or kind == "api_key", out
                assert_hidden(redactor, json.dumps({"message": text}), secret)
                assert_hidden(redactor, traceback_with(text), secret)
    if kind == "url_password":
        out = redactor.redact("postgresql://alice:S3cr3t-pa55w0rd@db.example.com:5432/app")
        assert out == "postgresql://alice:[REDACTED:url_password]@db.example.com:5432/app"


GLUED_KINDS = sorted(set(TOKEN_KINDS) - {"jwt", "aws"})
GLUES = ("ID-", "key_", "x", "Order7", "prefix-with-words-", "__")


@pytest.mark.parametrize("kind", GLUED_KINDS)
def test_keys_glued_to_the_text_before_them(kind: str) -> None:
    redactor = Redactor()
    for secret in token_canaries(random.Random(RNG_SEED))[kind]:
        for glue in GLUES:
            out = assert_hidden(redactor, f"sent {glue}{secret} twice", secret)
            assert out == f"sent {glue}[REDACTED:{kind}] twice"  # the glue itself stays
            assert_hidden(redactor, json.dumps({"note": f"{glue}{secret}"}), secret)


def test_glued_examples_from_the_field() -> None:
    redactor = Redactor()
    rng = random.Random(11)
    proj = f"sk-proj-abc123{chars(rng, URLSAFE, 60)}"
    ant = f"sk-ant-api03-{chars(rng, URLSAFE, 93)}AA"
    assert redactor.redact(f"ID-{proj}") == "ID-[REDACTED:openai]"
    assert redactor.redact(f"key_{proj}.") == "key_[REDACTED:openai]."
    assert redactor.redact(f"x{ant}") == "x[REDACTED:anthropic]"


GLUED_LOOKALIKES = (
    "task-management-and-planning-2024-review",
    "risk-assessment-framework-v2-final-draft",
    "desk-booking-service-for-Staff-members",
    "ask-a-librarian-chat-service-2023-Pilot",
    "disk-usage-report-for-q3-2024-quarterly",
    "mask_detection-model-v3-weights-final-2",
    "pdf_hf_export_20240101_final_version_two",
    "ringsk_monitoring_dashboard_v2_release",
    "SVC-TASK-001-sk-ADMISSIONS-OFFER-2024-OK",
    "boxoxb-shipping-label-printer-queue-42",
    "iPhone-mask-Edition-2024-task-runner",
)


def test_glued_lookalikes_stay_visible() -> None:
    redactor = Redactor()
    for text in GLUED_LOOKALIKES:
        assert redactor.redact(text) == text
        assert redactor.redact(f"feature {text}: see below") == f"feature {text}: see below"


def test_glued_prefixes_scan_in_linear_time() -> None:
    # Every "sk-" starts a glued candidate; the bounded look-aheads keep this from being quadratic
    # (unbounded ones would look at the whole run from each of the 100,000 starts).
    text = "x" + "sk-" * 100_000 + "abcdefABCDEF"
    assert Redactor().redact(text) == text


def test_env_secrets_and_names() -> None:
    redactor = Redactor.from_environment(
        {
            "SA_OPENAI_API_KEY": "  padded-secret-value  ",
            "MY_TOKEN": "short",
            "PATH": "/usr/local/bin:/usr/bin",
        }
    )
    assert redactor.redact("x padded-secret-value y") == "x [REDACTED:env] y"
    assert redactor.redact("short /usr/local/bin:/usr/bin") == "short /usr/local/bin:/usr/bin"


def test_invalid_pattern_names_it() -> None:
    with pytest.raises(ConfigError) as info:
        Redactor.from_environment({PATTERNS_VARIABLE: "ACME-[0-9]{6}\nbroken(["})
    message = str(info.value)
    assert PATTERNS_VARIABLE in message
    assert "'broken(['" in message
    assert "unterminated character set" in message  # the regex error itself
    with pytest.raises(ConfigError, match="matches the empty string"):
        Redactor.from_environment({PATTERNS_VARIABLE: "ok-[0-9]+;;x*"})


def test_logged_exception_chain_is_redacted() -> None:
    secret = token_canaries(random.Random(1))["anthropic"][0]
    exc = caught(ValueError(f"bad key {secret}"), caught(KeyError(secret)))
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, (ValueError, exc, None))
    assert RedactingFilter(Redactor()).filter(record) is True
    text = record.exc_text or ""
    assert secret not in text
    assert "KeyError: '[REDACTED:anthropic]'" in text
    assert "ValueError: bad key [REDACTED:anthropic]" in text
    assert "The above exception was the direct cause" in text


# --- logging and nested data ----------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s | %(api_key)s"))
    handler.addFilter(RedactingFilter(Redactor.from_environment({"GROQ_API_KEY": "env-groq-secret-1"})))
    logger = logging.getLogger("tests.redaction")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.handlers.clear()


def test_logging_filter_redacts_args_and_exceptions(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    key = token_canaries(random.Random(2))["openai"][1]
    logger.warning("calling %s with %s (%d%%)", "openai:gpt-5-mini", key, 50, extra={"api_key": key})
    error = caught(RuntimeError(f"provider said: invalid key {key}; env-groq-secret-1"))
    headers = {"headers": {"Authorization": f"Bearer {key}"}}
    logger.error("call failed for %s", headers, exc_info=error, extra={"api_key": 1})
    # A wrong format must not leak the raw args through logging's own error report.
    logger.error("broken format %d", key, extra={"api_key": None})
    output = stream.getvalue()
    assert key not in output
    assert "env-groq-secret-1" not in output
    lines = output.splitlines()
    assert (
        lines[0] == "WARNING calling openai:gpt-5-mini with [REDACTED:openai] (50%) | [REDACTED:secret_field]"
    )
    assert lines[1].startswith("ERROR call failed for {'headers': {'Authorization': 'Bearer [REDACTED:")
    assert "Traceback (most recent call last):" in output
    assert "RuntimeError: provider said: invalid key [REDACTED:openai]; [REDACTED:env]" in output
    assert lines[-1] == "ERROR broken format %d ('[REDACTED:openai]',) | None"


def test_logging_filter_record_fields() -> None:
    redactor = Redactor()
    key = token_canaries(random.Random(3))["github"][0]
    exc = caught(OSError(key))
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "token %s", (key,), (OSError, exc, None))
    assert RedactingFilter(redactor).filter(record) is True
    assert record.getMessage() == "token [REDACTED:github]"
    assert record.args is None
    assert record.exc_info is None
    assert record.exc_text is not None
    assert record.exc_text.endswith("OSError: [REDACTED:github]")


def test_redact_obj_nested() -> None:
    key = token_canaries(random.Random(4))["google"][0]
    data = {
        "api_key": key,
        "password": {"nested": "anything", "n": 1},
        "refresh_token": None,
        "max_tokens": 4000,
        "token_count": 12,
        "headers": {"Authorization": f"Bearer {key}", "Accept": "application/json"},
        "items": [("note", f"uses {key}"), {"Secret": 12345}, 7, None, True],
        "service_id": "SVC-ADM-001",
        3: key,
    }
    assert Redactor().redact_obj(data) == {
        "api_key": "[REDACTED:secret_field]",
        "password": "[REDACTED:secret_field]",
        "refresh_token": None,
        "max_tokens": 4000,
        "token_count": 12,
        "headers": {"Authorization": "[REDACTED:secret_field]", "Accept": "application/json"},
        "items": [("note", "uses [REDACTED:google]"), {"Secret": "[REDACTED:secret_field]"}, 7, None, True],
        "service_id": "SVC-ADM-001",
        3: "[REDACTED:google]",
    }
    assert Redactor().redact_obj(key) == "[REDACTED:google]"
    assert Redactor().redact_obj(b"bytes are left alone") == b"bytes are left alone"


# --- end to end: the canary --------------------------------------------------------------------

CANARY_INPUT = "sk-proj-CANARYinput0123456789abcdefghijklmnop"
CANARY_ENV = "sk-ant-api03-CANARYenv0123456789abcdefghijklmnopqrstu"
CANARY_EXC = "ghp_CANARYexc0123456789abcdefghijklmnopqrs"


async def test_canary_never_leaks(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY_ENV)
    monkeypatch.chdir(tmp_path)
    leaky = service("A", description=f"Uses the key {CANARY_INPUT} to reach the library API.")
    write_jsonl(
        tmp_path / "in.jsonl", [leaky, service("B"), f'{{"service_id": "C", "note": "{CANARY_INPUT}"']
    )
    offline = OfflineModel()

    async def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if '"service_id":"B"' in repr(messages):
            raise ModelAPIError("scripted", f"upstream rejected token {CANARY_EXC} and key {CANARY_ENV}")
        response: ModelResponse = await offline.function(messages, info)  # type: ignore[misc]
        return response

    redactor = Redactor.from_environment(os.environ)
    setup_logging(verbose=2, redactor=redactor)
    settings = load_settings(
        None, {"model": "test:scripted", "allow_prompt_logging": True, "cache_dir": tmp_path / "cache"}
    )
    context = build_context(settings, models={"test:scripted": FunctionModel(answer)}, redactor=redactor)
    try:
        report = await ProcessingEngine(context).run(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
        write_summary(tmp_path / "summary.json", summary_data(context.settings, report))
    finally:
        context.close()
        logging.getLogger("service_ambitions").handlers.clear()
    assert report.services_ok == 1
    assert report.failed_ids == ("B",)
    assert report.input_invalid == 1
    captured = capsys.readouterr()
    written = [path for path in tmp_path.rglob("*") if path.is_file() and path.name != "in.jsonl"]
    assert any(path.suffix == ".json" and "quarantine" in str(path) for path in written)
    assert any("cache" in str(path) for path in written)
    for canary in (CANARY_INPUT, CANARY_ENV, CANARY_EXC):
        for path in written:
            assert canary.encode() not in path.read_bytes(), f"{canary[:12]}... leaked into {path}"
        assert canary not in captured.err
        assert canary not in captured.out
    assert "[REDACTED" in (tmp_path / "out.jsonl").read_text()
    assert "[REDACTED" in captured.err
