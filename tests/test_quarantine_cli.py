"""quarantine ls/show/rm, and --resume reprocessing removed entries."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import SAMPLES, read_jsonl

Cli = Callable[..., Any]


def test_ls_show_rm_resume(cli: Cli, isolated: Path) -> None:
    lines = SAMPLES.read_text(encoding="utf-8").splitlines()[:6]
    (isolated / "services.jsonl").write_text("\n".join([*lines, "{broken"]) + "\n", encoding="utf-8")
    first = cli("run", "--cache-mode", "off", "--inject-failures", "p=0.02,kinds=500,seed=16")
    assert first.exit_code == 1, first.stderr  # three services have no record
    assert "3 ok, 3 failed, 1 invalid input line(s)" in first.stderr

    listing = cli("quarantine", "ls")
    assert listing.exit_code == 0
    rows = [line.split("\t") for line in listing.stdout.splitlines()]
    assert len(rows) == 4
    failed = sorted(row[1] for row in rows if row[3] == "model_error")
    assert len(failed) == 3
    assert any(row[3] == "input_invalid" and row[2] == "input" for row in rows)
    as_json = [json.loads(line) for line in cli("quarantine", "ls", "--json").stdout.splitlines()]
    assert {entry["service_id"] for entry in as_json if entry["kind"] == "model_error"} == set(failed)

    entry_id = next(row[0] for row in rows if row[3] == "model_error")
    shown = cli("quarantine", "show", entry_id[:8])
    assert shown.exit_code == 0
    detail = json.loads(shown.stdout)
    assert detail["id"] == entry_id
    assert detail["stage"] in {"descriptions", "features", "mapping"}
    assert "ModelServerError" in detail["error"]
    assert cli("quarantine", "show", "nope").exit_code == 2

    # Quarantined services are not retried by --resume until their entries are removed.
    untouched = cli("run", "--resume")
    assert untouched.exit_code == 1  # the output still lacks those three
    assert "3 service(s) have no record" in untouched.stderr
    assert len(read_jsonl(isolated / "evolutions.jsonl")) == 1 + 3

    removed = cli("quarantine", "rm", "--service", failed[0])
    assert removed.stdout.strip() == "removed 1 entry"
    assert cli("quarantine", "rm", entry_id).exit_code in (0, 2)
    assert cli("quarantine", "rm").exit_code == 2
    rest = cli("quarantine", "rm", "--all")
    assert rest.exit_code == 0
    resumed = cli("run", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    written = [record["service"]["service_id"] for record in read_jsonl(isolated / "evolutions.jsonl")[1:]]
    assert sorted(written) == sorted(json.loads(line)["service_id"] for line in lines)
    # The broken input line was quarantined again; nothing else is.
    final = cli("quarantine", "ls", "--json").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in final] == ["input_invalid"]
