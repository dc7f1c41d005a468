#!/usr/bin/env python3
"""Log wording lint: a transport retry must not read as a content re-ask, nor the other way round.

    uv run python scripts/log_lint.py [PATH ...]      # default: the project's src/

The tool retries in two unrelated places (docs/logging-levels.md):

- transport retries (tenacity): the HTTP request failed (429, 5xx, timeout, connection, Retry-After);
  the fix is rate limits, concurrency or waiting;
- content re-asks (pydantic-ai ``retries``): the model answered, but the answer failed the schema or
  validation; the fix is the prompt, the model or ``retries``.

An operator picks the knob from the log line, so the wording must not mix them. The rule, applied to
the literal text of the message of every logging call (case-insensitive, whole words):

1. A message with a transport cue (transport, HTTP, 429, 5xx or 500-504, rate limit, timeout / timed
   out, connection, Retry-After) must not use content-retry wording (re-ask, "retrying the answer",
   "invalid output", schema).
2. A message with a content cue (re-ask, schema, validation, output) must not say "transport".

A logging call is ``<receiver>.<level>(message, ...)`` where the level is debug, info, warning, warn,
error, exception, critical or fatal (or ``.log(level, message, ...)``) and the receiver's name is
``log``, ``logger``, ``logging``, ``logfire`` or ends in ``_log`` / ``logger`` (``self._log`` too).
The message is a string literal, an f-string, ``"...".format(...)``, ``"..." % args`` or a ``+`` of
these; interpolated values count as ``{}``, so only the words written in the source are judged.

Exit status: 0 clean, 1 findings (``file:line: "message": reason``), 2 a file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal"})
RECEIVERS = frozenset({"log", "logger", "logging", "logfire"})

TRANSPORT_CUE = re.compile(
    r"\btransport|\bhttp\b|\b429\b|\b5xx\b|\b50[0-4]\b|\brate[ _-]?limit|\btime[ _-]?outs?\b"
    r"|\btimed out\b|\bconnection|\bretry-after\b",
    re.IGNORECASE,
)
CONTENT_RETRY_WORDING = re.compile(
    r"\bre-?ask|\bretrying the answer\b|\binvalid output\b|\bschema", re.IGNORECASE
)
CONTENT_CUE = re.compile(r"\bre-?ask|\bschema|\bvalidation\b|\boutput\b", re.IGNORECASE)
TRANSPORT_WORD = re.compile(r"\btransport", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """One logging call whose wording mixes the two kinds of retry."""

    path: Path
    line: int
    message: str
    reason: str

    def __str__(self) -> str:
        return f'{self.path}:{self.line}: "{self.message}": {self.reason}'


def wording_problem(message: str) -> str | None:
    """The reason ``message`` breaks the rule, or None."""
    if TRANSPORT_CUE.search(message) and (wording := CONTENT_RETRY_WORDING.search(message)):
        return f"transport-level message worded as a content re-ask ({wording.group(0)!r})"
    if CONTENT_CUE.search(message) and TRANSPORT_WORD.search(message):
        return "content re-ask message says 'transport'"
    return None


def literal_text(node: ast.expr) -> str | None:
    """The text a message expression spells out in the source, or None when it is not literal."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) and isinstance(part.value, str) else "{}"
            for part in node.values
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return literal_text(node.left)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = literal_text(node.left), literal_text(node.right)
        if left is None and right is None:
            return None
        return ("{}" if left is None else left) + ("{}" if right is None else right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return literal_text(node.func.value)
    return None


def _receiver_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def logged_message(call: ast.Call) -> ast.expr | None:
    """The message argument when ``call`` is a logging call."""
    if not isinstance(call.func, ast.Attribute):
        return None
    name = (_receiver_name(call.func.value) or "").lower()
    if not (name.lstrip("_") in RECEIVERS or name.endswith(("_log", "logger"))):
        return None
    index = 1 if call.func.attr == "log" else 0 if call.func.attr in LEVELS else None
    if index is None or len(call.args) <= index:
        return None
    return call.args[index]


def check_source(source: str, path: Path) -> list[Finding]:
    """Findings in one module's source.

    Raises:
        SyntaxError: The source does not parse.
    """
    findings: list[Finding] = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if not isinstance(node, ast.Call) or (argument := logged_message(node)) is None:
            continue
        message = literal_text(argument)
        if message is not None and (reason := wording_problem(message)):
            findings.append(Finding(path, node.lineno, message, reason))
    return sorted(findings, key=lambda finding: finding.line)


def python_files(paths: Sequence[Path]) -> Iterator[Path]:
    """Every ``.py`` file named or under a named directory, in a stable order."""
    for path in paths:
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def main(argv: Sequence[str] | None = None) -> int:
    """Lint the given paths; print findings; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("paths", nargs="*", type=Path, default=[ROOT / "src"], help="files or directories")
    args = parser.parse_args(argv)
    findings: list[Finding] = []
    for path in python_files(args.paths):
        try:
            findings += check_source(path.read_text(encoding="utf-8"), path)
        except (OSError, UnicodeDecodeError, SyntaxError) as exc:
            print(f"{path}: cannot check: {exc}", file=sys.stderr)
            return 2
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} log message(s) mix transport retries and content re-asks", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
