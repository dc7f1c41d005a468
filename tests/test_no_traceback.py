"""No command ever shows a traceback: every CLI command, run as a real process, with bad arguments.

The commands are listed from the Typer app, so a new command is covered by the generic cases (its
``--help``, an unknown flag, the wrong kind of path for each path option, a malformed environment and
config for commands that load settings) without touching this file. The processes run a few at a time
(in one fixture) to keep the whole set well under a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer

from service_ambitions.cli.app import app
from service_ambitions.content.loader import default_data_dir
from service_ambitions.errors import ExitCode
from tests.conftest import PROVIDER_VARIABLES, SAMPLES

EXIT_CODES = {int(code) for code in ExitCode}
MIGRATE_FIXTURE = Path(__file__).parent / "fixtures" / "evolutions_1_0.jsonl"
TIMEOUT = 60.0
"""Per process; a hang is a failure too."""

REQUIRED = {
    "from_version": "1.0",
    "input_file": "old.jsonl",
    "output_file": "migrated.jsonl",
    "entry_id": "abc",
    "shard_outputs": "old.jsonl",
}
"""Valid values for required parameters, so that the bad one under test is what the command meets."""
ACTIONS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("cache", "purge"): ("--all", "--dry-run"),
    ("quarantine", "rm"): ("--all",),
}
"""Arguments without which a command stops before it looks at its paths or settings."""


@dataclass(frozen=True)
class Case:
    """One invocation: arguments, extra environment, an optional ``.env`` in its working directory."""

    id: str
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    dotenv: bytes | None = None


@dataclass(frozen=True)
class Command:
    """A leaf command of the app, with its options."""

    path: tuple[str, ...]
    options: dict[str, str]  # parameter name -> its first flag, for options that take a value
    required: tuple[str, ...]  # base arguments giving every required parameter a valid value


def _commands() -> list[Command]:
    """Every leaf command of the Typer app."""

    def walk(command: object, path: tuple[str, ...]) -> Iterator[Command]:
        children: dict[str, object] | None = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                yield from walk(child, (*path, name))
            return
        options: dict[str, str] = {}
        required: list[str] = []
        for param in getattr(command, "params", []):
            flags = [flag for flag in param.opts if flag.startswith("--")]
            if flags and not getattr(param, "is_flag", False) and not getattr(param, "count", False):
                options[param.name] = flags[0]
            if param.required:
                assert param.name in REQUIRED, f"{path}: give REQUIRED a valid value for {param.name!r}"
                required += [flags[0], REQUIRED[param.name]] if flags else [REQUIRED[param.name]]
        yield Command(path, options, tuple(required))

    return list(walk(typer.main.get_command(app), ()))


def _is_path(name: str) -> bool:
    return name == "config" or name.endswith(("_file", "_dir", "_json"))


def _wrong_kind(name: str) -> str:
    """A directory where a file is expected, a file where a directory is."""
    return "afile" if name.endswith("_dir") else "adir"


def _generic(command: Command) -> Iterator[Case]:
    """What every command gets: its help, each path option of the wrong kind, outputs under /proc,
    and, when it loads settings, a malformed ``SA_*`` value and a ``.env`` that is not UTF-8."""
    name = "-".join(command.path)
    base = (*command.path, *command.required, *ACTIONS.get(command.path, ()))
    yield Case(f"{name}-help", (*command.path, "--help"))
    for option, flag in command.options.items():
        if _is_path(option) and (option != "config" or command.path == ("run",)):  # one --config is enough
            yield Case(f"{name}-{flag[2:]}-wrong-kind", (*base, flag, _wrong_kind(option)))
    if command.path[0] in ("run", "preflight", "migrate"):
        for option in ("output_file", "summary_json"):
            if option in command.options:
                flag = command.options[option]
                yield Case(f"{name}-{flag[2:]}-under-proc", (*base, flag, "/proc/sa/out.jsonl"))
    if "config" in command.options:
        yield Case(f"{name}-env-bad-json", base, env={"SA_MODELS_RATE_LIMITS": "{bad"})
        yield Case(f"{name}-dotenv-not-utf8", base, dotenv=b"SA_SEED=1\nOPENAI_API_KEY=\xff\n")


SPECIAL = [
    Case("no-command", ()),
    Case("cache-no-subcommand", ("cache",)),
    Case("unknown-flag", ("--no-such-flag",)),
    Case("run-unknown-flag", ("run", "--no-such-flag")),
    Case("quarantine-rm-unknown-flag", ("quarantine", "rm", "--no-such-flag")),
    Case("run-config-not-utf8", ("run", "--config", "notutf8.yaml")),
    Case("run-env-deep-json", ("run", "--dry-run"), env={"SA_MAPPING_SETS": "[" * 100_000}),
    Case("run-env-not-utf8-model", ("run", "--dry-run"), env={"SA_MODEL": "caf\udce9"}),
    Case("run-bad-number", ("run", "--concurrency", "abc")),
    Case("run-port-out-of-range", ("run", "--metrics-port", "70000")),
    Case("run-missing-input", ("run", "--input-file", "missing.jsonl")),
    Case("run-input-not-utf8", ("run", "--input-file", "notutf8.jsonl", "--cache-mode", "off")),
    Case("run-deep-data", ("run", "--dry-run", "--data-dir", "deepdata")),
    Case("run-output-is-input", ("run", "--input-file", "services.jsonl", "--output-file", "services.jsonl")),
    Case("validate-input-not-utf8", ("validate", "--input-file", "notutf8.jsonl")),
    Case("migrate-bad-version", ("migrate", "--from", "9.9", "--input", "old.jsonl", "--output", "x.jsonl")),
    Case("migrate-input-not-utf8", ("migrate", "--from", "1.0", "--input", "notutf8.jsonl", "--output", "x")),
    Case("cache-purge-bad-duration", ("cache", "purge", "--older-than", "soon")),
    Case("cache-validate-junk", ("cache", "validate", "--cache-dir", "junkcache")),
    Case("cache-purge-junk", ("cache", "purge", "--all", "--cache-dir", "junkcache")),
    Case("quarantine-ls-junk", ("quarantine", "ls", "--output-file", "junk.jsonl")),
    Case("quarantine-show-junk", ("quarantine", "show", "zz", "--output-file", "junk.jsonl")),
    Case("quarantine-rm-junk", ("quarantine", "rm", "--all", "--output-file", "junk.jsonl")),
]
"""Bad numbers, unknown flags, undecodable or deeply nested files, junk in the cache and quarantine."""

CASES = [case for command in _commands() for case in _generic(command)] + SPECIAL


def _workspace(directory: Path, case: Case) -> None:
    """Files the bad arguments point at: the wrong kinds, undecodable and deeply nested content, junk."""
    shutil.copy(SAMPLES, directory / "services.jsonl")
    shutil.copy(MIGRATE_FIXTURE, directory / "old.jsonl")
    (directory / "afile").write_text("", encoding="utf-8")
    (directory / "adir").mkdir()
    (directory / "notutf8.yaml").write_bytes(b"model: offline\nseed: \xff\n")
    (directory / "notutf8.jsonl").write_bytes(b'{"service_id": "caf\xe9"}\n')
    shutil.copytree(default_data_dir(), directory / "deepdata")
    (directory / "deepdata" / "roles.json").write_bytes(b"[" * 100_000)
    junk = directory / "junkcache"
    (junk / "entries" / "cd" / "x.json").mkdir(parents=True)
    (junk / "entries" / "ab").write_bytes(b"not a directory")
    (junk / "manifest.sqlite3").write_bytes(b"not a database\xff")
    quarantine = directory / "junk.jsonl.quarantine"
    (quarantine / "xx.json").mkdir(parents=True)
    (quarantine / "zz.json").write_bytes(b"{bad")
    (quarantine / "yy.json").write_bytes(b'{"id": "caf\xe9"}')
    if case.dotenv is not None:
        (directory / ".env").write_bytes(case.dotenv)


def _environment(directory: Path, case: Case) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SA_") and key not in PROVIDER_VARIABLES and not key.startswith("PYTEST")
    }
    env.update({"XDG_CACHE_HOME": str(directory / "xdg"), "HOME": str(directory), "COLUMNS": "100"})
    env.update(case.env)
    return env


def _run(directory: Path, case: Case) -> subprocess.CompletedProcess[bytes]:
    _workspace(directory, case)
    return subprocess.run(
        [sys.executable, "-m", "service_ambitions", *case.args],
        cwd=directory,
        env=_environment(directory, case),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess[bytes] | BaseException]:
    """Run the selected cases a few at a time: each process spends about a second on imports."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.originalname == "test_no_traceback"
    ]
    chosen = [case for case in CASES if case in selected]  # only what this session runs (-k, a node id)
    root = tmp_path_factory.mktemp("no-traceback")

    def attempt(case: Case) -> subprocess.CompletedProcess[bytes] | BaseException:
        directory = root / case.id
        directory.mkdir()
        try:
            return _run(directory, case)
        except (OSError, subprocess.SubprocessError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        return dict(zip((case.id for case in chosen), pool.map(attempt, chosen), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_no_traceback(
    case: Case, results: dict[str, subprocess.CompletedProcess[bytes] | BaseException]
) -> None:
    outcome = results[case.id]
    if isinstance(outcome, BaseException):
        pytest.fail(f"{case.args}: {outcome!r}")
    stderr = outcome.stderr.decode("utf-8", errors="replace")
    tail = "\n".join(stderr.splitlines()[-6:])
    assert "Traceback" not in stderr, f"{case.args}:\n{tail}"
    assert "internal error" not in stderr, f"{case.args}: a bug reached the catch-all:\n{tail}"
    assert outcome.returncode in EXIT_CODES, f"{case.args}: exit {outcome.returncode}\n{tail}"
    if outcome.returncode not in (0, 1):
        assert stderr.strip() or outcome.stdout.strip(), (
            f"{case.args}: exit {outcome.returncode} and no message"
        )
