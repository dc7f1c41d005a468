"""scripts/log_lint.py: transport retries and content re-asks are never worded as each other."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "log_lint.py"

CLEAN = """
    import logging

    log = logging.getLogger(__name__)
    logger = logging.getLogger("x")

    def run(self, model: str, attempt: int, wait: float) -> None:
        log.warning("transport retry %d for %s: HTTP 429, waiting %.1fs (Retry-After)", attempt, model, wait)
        logger.warning(f"connection reset by {model}; retrying in {wait}s")
        logging.info("answer failed schema validation; re-asking %s (%d/3)", model, attempt)
        self._log.debug("invalid output from {}: {}".format(model, "missing plateau"))
        log.error("service %s failed at %s: %s", "SVC-ADM-001", "features", "timeout")
        print("HTTP 429 then a schema re-ask: not a log call")
        raise_error = ValueError("transport schema")  # not a log call either
        log.info(message_from_elsewhere)
"""

BAD = """
    import logging

    log = logging.getLogger(__name__)

    def run(self, model, attempt):
        log.warning("HTTP 429 from %s; re-asking the model", model)
        self.logger.info(f"rate limit hit, retrying the answer ({attempt})")
        logging.log(logging.WARNING, "request timed out: " + "invalid output, retry %d", attempt)
        log.warning("schema validation failed; transport retry %d", attempt)
        log.debug("output rejected, will retry the transport {}".format(attempt))
"""


def load_lint() -> ModuleType:
    return load_script("log_lint")


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def test_clean_source_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "clean.py", CLEAN)
    assert load_lint().main([str(path)]) == 0
    assert capsys.readouterr().out == ""


def test_mixed_wording_fails_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pkg").mkdir()
    write(tmp_path / "pkg", "bad.py", BAD)
    write(tmp_path / "pkg", "clean.py", CLEAN)
    assert load_lint().main([str(tmp_path / "pkg")]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    bad = tmp_path / "pkg" / "bad.py"
    assert lines == [
        f'{bad}:7: "HTTP 429 from %s; re-asking the model": '
        "transport-level message worded as a content re-ask ('re-ask')",
        f'{bad}:8: "rate limit hit, retrying the answer ({{}})": '
        "transport-level message worded as a content re-ask ('retrying the answer')",
        f'{bad}:9: "request timed out: invalid output, retry %d": '
        "transport-level message worded as a content re-ask ('invalid output')",
        f'{bad}:10: "schema validation failed; transport retry %d": '
        "transport-level message worded as a content re-ask ('schema')",
        f'{bad}:11: "output rejected, will retry the transport {{}}": '
        "content re-ask message says 'transport'",
    ]
    assert "5 log message(s)" in captured.err


def test_unparsable_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "broken.py", "def broken(:\n")
    assert load_lint().main([str(path)]) == 2
    assert "broken.py: cannot check" in capsys.readouterr().err


def test_project_sources_pass() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
