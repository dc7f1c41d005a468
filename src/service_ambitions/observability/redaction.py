"""Secret redaction for every sink: logs, exceptions, quarantine entries, state files.

One :class:`Redactor` is built per run (``Redactor.from_environment(os.environ)``) and handed down;
there is no module-level instance. All built-in rules are compiled into one alternation, so a string
is scanned once; every rule is anchored on a literal prefix or a word boundary and uses possessive
quantifiers or bounded look-aheads, so the scan stays linear in the length of the text. Provider keys
are also found glued to the text before them (``ID-sk-proj-...``) when they look random.

A match is replaced by ``[REDACTED:<kind>]``. Rules that hold a label (``Authorization: Bearer``,
``api_key=``, ``scheme://user:``) keep the label and hide only the secret part.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service_ambitions.errors import ConfigError

__all__ = ["PATTERNS_VARIABLE", "RedactingFilter", "Redactor"]

PATTERNS_VARIABLE = "SA_REDACTION_PATTERNS"
"""Extra regexes, separated by newlines or ``;;``; a named group ``secret`` limits what is hidden."""

_MIN_SECRET_VALUE = 8
_SECRET_VARIABLE_SUFFIXES = (
    "_API_KEY",
    "_TOKEN",
    "_SECRET",
    "PASSWORD",
    "_PASSWD",
    "_SECRET_KEY",
    "_SECRET_ACCESS_KEY",
    "_PRIVATE_KEY",
)

# Word parts that make a field name secret. "tokens", "token_count", "tokenizer" and friends are usage
# numbers, not credentials, and stay visible.
_SENSITIVE_WORD = (
    r"(?:api[_-]?key|secret|passw(?:or)?d|passphrase|private[_-]?key"
    r"|token(?!s|iz|[_-]?(?:count|limit|usage|budget|estimate|type)))"
)
# Field names whose whole value is a credential (redact_obj, log record extras).
_SECRET_NAME = re.compile(_SENSITIVE_WORD + r"|authorization|cookie", re.IGNORECASE)

_B = r"(?<![A-Za-z0-9_-])"  # not inside a longer token
_NOT_MASKED = r"(?!\[REDACTED)"  # keeps redact() idempotent
_Q = r"(?:\\*[\"'])?"  # an optional quote, escaped any number of times (JSON inside JSON)
# After "name:" (not "name=") a lone plain word is prose ("password: see below"), not a value.
_NOT_A_WORD = r"(?![A-Za-z][a-z]*+(?:$|[\s,;&'\"`<>(){}\[\]\\.!?]))"

# (kind, pattern). Named groups "s", "s1", "s2"... mark the hidden part; without them the
# whole match is hidden. Order matters only between rules matching at the same position.
_ANYWHERE_RULES: tuple[tuple[str, str], ...] = (
    (
        "private_key",
        r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?s:.*?-----END[A-Z0-9 ]*PRIVATE KEY-----|.*)",
    ),
)
# Provider keys: (kind, literal prefix, body). A longer prefix sharing a start ("sk-ant-", "sk-") comes first.
_VENDOR_KEYS: tuple[tuple[str, str, str], ...] = (
    ("anthropic", "sk-ant-", r"[A-Za-z0-9_-]{20,}+"),
    ("openrouter", "sk-or-", r"[A-Za-z0-9_-]{20,}+"),
    ("openai", "sk-", r"[A-Za-z0-9_-]{20,}+"),
    ("groq", "gsk_", r"[A-Za-z0-9]{20,}+"),
    ("google", "AIza", r"[A-Za-z0-9_-]{30,}+"),
    ("github", "gh[pousr]_", r"[A-Za-z0-9]{30,}+"),
    ("github", "github_pat_", r"[A-Za-z0-9_]{30,}+"),
    ("slack", "xox[abposr]-", r"[A-Za-z0-9-]{10,}+"),
    ("logfire", "pylf_", r"[A-Za-z0-9_]{20,}+"),
    ("huggingface", "hf_", r"[A-Za-z0-9]{30,}+"),
)
# A key glued to the text before it ("ID-sk-proj-...", "key_sk-...", "xsk-ant-...") has no token start to
# anchor on, so its body must also look random: a digit and a lower-to-upper case change within its first
# 64 characters. Glued words ("task-management-2024", "risk-based-Review") lack one or the other; random
# text that happens to hold a prefix (URL-safe base64) is hidden too, which is rare and harmless. The
# look-aheads are bounded, so the scan stays linear. OpenRouter keys are lowercase hex, with a version.
_RANDOM_BODY = r"(?=[A-Za-z0-9_-]{0,64}?[0-9])(?=[A-Za-z0-9_-]{0,64}?[a-z][A-Z])"
_GLUED_BODY = {"openrouter": r"(?=v1-[0-9a-f]{64})"}
# One look-ahead for any prefix before trying the glued rules one by one (most positions fail it).
_GLUED_START = "(?=" + "|".join(prefix for _, prefix, _ in _VENDOR_KEYS) + ")"
_GLUED_RULES: tuple[tuple[str, str], ...] = tuple(
    (kind, prefix + _GLUED_BODY.get(kind, _RANDOM_BODY) + body) for kind, prefix, body in _VENDOR_KEYS
)
# These only start where a token starts (one shared look-behind, checked once per position), and
# their leading runs are possessive: each character is looked at a bounded number of times.
_TOKEN_RULES: tuple[tuple[str, str], ...] = (
    (
        "authorization",
        r"(?i:(?:proxy-)?authorization)"
        + _Q
        + r"[ \t]*[:=][ \t]*"
        + _Q
        + r"(?:(?P<scheme>(?i:bearer|basic|token|bot|digest|apikey|negotiate))[ \t]+)?+"
        + r"(?P<s>"
        + _NOT_MASKED
        + r"(?(scheme)|"
        + _NOT_A_WORD
        + r")[^\s\"'\\,;]+)",
    ),
    (
        # "svn+ssh://" starts at "ssh": the scheme prefix is not secret and stays.
        "url_password",
        r"[A-Za-z][A-Za-z0-9_-]*+://[^\s:/?#@\[\]\"'<>]*+:(?P<s>" + _NOT_MASKED + r"[^\s/?#\"'<>]+)@",
    ),
    (
        "secret_field",
        # Cheap check first (is the word followed by ":" or "="?), then look for the secret word in it.
        r"(?=[A-Za-z0-9_-]++" + _Q + r"[ \t]*[:=])(?=[A-Za-z0-9_-]*?(?i:" + _SENSITIVE_WORD + r"))"
        r"[A-Za-z0-9_-]++" + _Q + r"[ \t]*(?:(?P<eq>=)|:)[ \t]*"
        r"(?:\\+\"(?P<s4>" + _NOT_MASKED + r"(?:[^\"\\\n]|\\[^\"\n])+)\\+\""
        r"|\"(?P<s1>" + _NOT_MASKED + r"(?:[^\"\\\n]|\\.)+)\""
        r"|'(?P<s2>" + _NOT_MASKED + r"[^'\n]+)'"
        r"|(?P<s3>(?!\[REDACTED|None\b|null\b|\*\*\*|\.\.\.|\$\{|SecretStr\()(?(eq)|" + _NOT_A_WORD + r")"
        r"[^\s,;&'\"`<>(){}\[\]\\]+))",
    ),
    ("jwt", r"eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+"),
    *((kind, prefix + body) for kind, prefix, body in _VENDOR_KEYS),
    ("aws", r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    (
        "bearer",
        r"(?:Bearer|bearer|BEARER)[ \t]+(?P<s>"
        + _NOT_MASKED
        # A bearer token has a digit; "bearer instruments" in prose does not.
        + r"(?=[A-Za-z0-9._~+/=-]*?[0-9])[A-Za-z0-9._~+/=-]{12,}+)",
    ),
    (
        # Mistral-style keys are 32 bare alphanumerics: only a secret when a key-ish label is next to it.
        "api_key",
        r"(?i:mistral[A-Za-z0-9_-]*+|(?:api|access|secret|private|auth)[ _-]?key|x-api-key|key)"
        + _Q
        + r"[ \t]*(?:[:=]|->)?[ \t]*"
        + _Q
        # Mixed case: a 32-character lowercase hex digest next to "cache key" is not a key.
        + r"(?P<s>(?=[a-z0-9]{0,31}[A-Z])[A-Za-z0-9]{32})(?![A-Za-z0-9_-])",
    ),
)

# LogRecord attributes that are not user extras (``extra={...}``); extras get redacted too.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


@dataclass(frozen=True)
class _Rule:
    kind: str
    secret_groups: tuple[str, ...]


def _mask(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _hide(match: re.Match[str], groups: Iterable[str | int], kind: str) -> str:
    """The matched text with each participating secret group replaced (the whole match without groups)."""
    text, start, end = match.string, match.start(), match.end()
    parts: list[str] = []
    position = start
    for group in groups:
        group_start, group_end = match.span(group)
        if group_start >= 0:
            parts += (text[position:group_start], _mask(kind))
            position = group_end
    if not parts:
        return _mask(kind)
    parts.append(text[position:end])
    return "".join(parts)


def _is_secret_variable(name: str) -> bool:
    """Whether an environment variable of this name holds a secret (by its name alone)."""
    upper = name.upper()
    return upper == "SA_OPENAI_API_KEY" or upper.endswith(_SECRET_VARIABLE_SUFFIXES)


class Redactor:
    """Removes secrets from strings, nested data, log records and exceptions.

    Args:
        extra_patterns: Additional regexes; a named group ``secret`` limits what is hidden.
        secret_values: Exact values to hide wherever they occur (shorter than 8 characters are ignored).
        source: Where ``extra_patterns`` came from, for error messages.

    Raises:
        ConfigError: An extra pattern does not compile or matches the empty string.
    """

    def __init__(
        self,
        extra_patterns: Iterable[str] = (),
        secret_values: Iterable[str] = (),
        *,
        source: str = "redaction patterns",
    ) -> None:
        values = sorted(
            {v for raw in secret_values for v in (raw, raw.strip()) if len(v) >= _MIN_SECRET_VALUE},
            key=lambda v: (-len(v), v),
        )
        # Known values go first, in their own pass: a rule must not hide only the start of one.
        self._known = re.compile("|".join(map(re.escape, values))) if values else None
        self._rules: dict[str, _Rule] = {}
        alternatives = [self._alternative(kind, pattern) for kind, pattern in _ANYWHERE_RULES]
        on_token = [self._alternative(kind, pattern) for kind, pattern in _TOKEN_RULES]
        alternatives.append(_B + "(?:" + "|".join(on_token) + ")")
        glued = [self._alternative(kind, pattern) for kind, pattern in _GLUED_RULES]
        alternatives.append(_GLUED_START + "(?:" + "|".join(glued) + ")")
        self._combined = re.compile("|".join(alternatives))
        self._extra = tuple(self._compile_extra(pattern, source) for pattern in extra_patterns)

    def _alternative(self, kind: str, pattern: str) -> str:
        prefix = f"r{len(self._rules)}"
        names = re.findall(r"\(\?P<(s\d*)>", pattern)
        self._rules[prefix] = _Rule(kind, tuple(f"{prefix}_{name}" for name in names))
        scoped = pattern
        for opening in ("(?P<", "(?P=", "(?("):  # group names are per rule: prefix them
            scoped = scoped.replace(opening, f"{opening}{prefix}_")
        return f"(?P<{prefix}>{scoped})"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Redactor:
        """Build from ``SA_REDACTION_PATTERNS`` and the values of secret-named variables in ``environ``.

        Raises:
            ConfigError: A pattern in ``SA_REDACTION_PATTERNS`` is invalid (named with the regex error).
        """
        raw = environ.get(PATTERNS_VARIABLE, "")
        patterns = [part.strip() for part in re.split(r"\r?\n|;;", raw) if part.strip()]
        secrets = [value for name, value in environ.items() if _is_secret_variable(name)]
        return cls(patterns, secrets, source=f"{PATTERNS_VARIABLE} (environment)")

    @staticmethod
    def _compile_extra(pattern: str, source: str) -> re.Pattern[str]:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{source}: invalid redaction pattern {pattern!r}: {exc}") from exc
        if compiled.fullmatch(""):
            raise ConfigError(f"{source}: redaction pattern {pattern!r} matches the empty string")
        return compiled

    def _replace(self, match: re.Match[str]) -> str:
        rule = self._rules[match.lastgroup or ""]
        return _hide(match, rule.secret_groups, rule.kind)

    @staticmethod
    def _replace_extra(match: re.Match[str]) -> str:
        groups = ["secret"] if "secret" in match.re.groupindex else []
        return _hide(match, groups, "custom")

    def redact(self, text: str) -> str:
        """Return ``text`` with every secret replaced by ``[REDACTED:<kind>]``."""
        if not text:
            return text
        if self._known is not None:
            text = self._known.sub(_mask("env"), text)
        text = self._combined.sub(self._replace, text)
        for pattern in self._extra:
            text = pattern.sub(self._replace_extra, text)
        return text

    def redact_obj(self, value: Any) -> Any:
        """Redact strings inside dicts, lists and tuples; values of secret-named keys are fully replaced.

        Keys are kept as they are; other scalars are returned unchanged.
        """
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            return {key: self.redact_field(key, item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact_obj(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.redact_obj(item) for item in value)
        return value

    def redact_field(self, key: object, value: Any) -> Any:
        """Redact one field's value: fully replaced when the key names a secret, else :meth:`redact_obj`."""
        if value is not None and isinstance(key, str) and _SECRET_NAME.search(key):
            return _mask("secret_field")
        return self.redact_obj(value)


class RedactingFilter(logging.Filter):
    """Redacts a log record in place: message with its args, extras, exception and stack text.

    Attach it to every handler (a logger's filters do not see records propagated from child loggers).
    The message is formatted once, redacted, and stored with ``args`` cleared. A raised exception is
    formatted into ``exc_text`` (redacted) and ``exc_info`` is cleared, so no sink can format the raw one.
    """

    def __init__(self, redactor: Redactor, name: str = "") -> None:
        super().__init__(name)
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record``; never drops it."""
        redact: Callable[[str], str] = self.redactor.redact
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            # A broken format string: logging would print the raw args in its error report.
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        exc_text = record.exc_text
        if not exc_text and record.exc_info and record.exc_info[1] is not None:
            exc_text = "".join(traceback.format_exception(record.exc_info[1])).rstrip("\n")
        record.exc_info = None
        record.exc_text = redact(exc_text) if exc_text else exc_text
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRIBUTES:
                setattr(record, key, self.redactor.redact_field(key, value))
        return True
