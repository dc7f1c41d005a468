"""scripts/gen_docs.py: docs/cli.md and the key table of docs/configuration.md follow the code."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service_ambitions.cli.app import app
from service_ambitions.settings import Settings
from tests.conftest import ROOT, load_script

TEMPLATE = ROOT / "docs" / "templates" / "cli.md"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return load_script("gen_docs")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A project directory holding copies of the template and the generated docs."""
    root = tmp_path / "project"
    for name in ("docs/templates/cli.md", "docs/cli.md", "docs/configuration.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    return root


def test_committed_docs_are_generated_from_the_code(gen: ModuleType) -> None:
    stale = [str(path.relative_to(ROOT)) for path in gen.stale(ROOT)]
    assert not stale, f"{', '.join(stale)} out of date with the code: run make docs (and commit the result)"


def test_check_names_the_stale_file_writes_nothing_and_writing_fixes_it(
    gen: ModuleType, copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen.main(["--root", str(copy)]) == 0  # bring the copy up to date with the code as it is now
    capsys.readouterr()
    cli = copy / "docs" / "cli.md"
    cli.write_text(cli.read_text(encoding="utf-8").replace("## `run`", "## `run` (edited by hand)"))
    before = cli.read_bytes()

    assert gen.main(["--check", "--root", str(copy)]) == 1
    assert "docs/cli.md is stale: run make docs" in capsys.readouterr().err
    assert cli.read_bytes() == before

    assert gen.main(["--root", str(copy)]) == 0
    assert "wrote docs/cli.md" in capsys.readouterr().err
    assert gen.main(["--check", "--root", str(copy)]) == 0
    assert "(edited by hand)" not in cli.read_text(encoding="utf-8")


def test_a_stale_key_table_is_found(gen: ModuleType, copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["--root", str(copy)]) == 0
    config = copy / "docs" / "configuration.md"
    config.write_text(config.read_text(encoding="utf-8").replace("`SA_CONCURRENCY`", "`SA_CONCURENCY`"))
    capsys.readouterr()

    assert gen.main(["--check", "--root", str(copy)]) == 1
    assert capsys.readouterr().err == "docs/configuration.md is stale: run make docs\n"


def test_every_command_option_and_setting_is_documented(gen: ModuleType) -> None:
    text, _ = gen.render_cli(TEMPLATE.read_text(encoding="utf-8"), app)
    for command in gen._commands(app)[1:]:
        assert f"## `{command.name}`" in text
        for param in command.command.params:
            label = gen._param_label(param)
            assert f"| {label} |" in text, f"{command.name}: {label} is missing from docs/cli.md"
    keys = {item.key for item in gen.settings_keys()}
    for name, info in Settings.model_fields.items():
        section: Any = info.annotation
        if gen._is_section(section):
            assert all(f"{name}.{child}" in keys for child in section.model_fields)
        else:
            assert name in keys


def test_output_does_not_depend_on_the_terminal_or_the_environment(
    gen: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    template = TEMPLATE.read_text(encoding="utf-8")
    first = gen.render_cli(template, app)[0]
    monkeypatch.setenv("COLUMNS", "20")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    assert gen.render_cli(template, app)[0] == first
    assert "\x1b[" not in first
    assert "`$XDG_CACHE_HOME/service-ambitions`" in first
    assert str(tmp_path) not in first


def test_help_examples_become_fenced_code(gen: ModuleType) -> None:
    blocks = gen._help_blocks("Do it.\n\nExamples:\n\n\b\n    tool run --a\n    tool run --b\n\nAfter <n>.")
    assert blocks == ["Do it.", "Examples:", "```sh\ntool run --a\ntool run --b\n```", "After \\<n>."]


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("<!-- @options run\n--no-such-flag: x\n-->", "`run` has no option '--no-such-flag'"),
        ("<!-- @options run\n--seed:\n  setting: seeds\n-->", "unknown setting 'seeds'"),
        ("<!-- @command frobnicate -->", "@command frobnicate: the app has no such command"),
        ("<!-- @frobnicate -->", "unknown directive @frobnicate"),
    ],
)
def test_template_mistakes_are_refused(gen: ModuleType, directive: str, message: str) -> None:
    template = TEMPLATE.read_text(encoding="utf-8").replace(
        "<!-- @options run\n", directive + "\n<!-- @note\n", 1
    )
    with pytest.raises(gen.GenerationError, match=re.escape(message)):
        gen.render_cli(template, app)


def test_an_exit_code_missing_from_the_table_is_refused(gen: ModuleType) -> None:
    template = TEMPLATE.read_text(encoding="utf-8").replace("| 5 | `INTEGRITY` |", "| 6 | `INTEGRITY` |")
    with pytest.raises(gen.GenerationError, match="missing: 5 INTEGRITY; not in ExitCode: 6 INTEGRITY"):
        gen.render_cli(template, app)


def test_a_setting_without_description_is_refused(gen: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Settings.model_fields["seed"], "description", None)
    with pytest.raises(gen.GenerationError, match="setting 'seed' has no description"):
        gen.settings_keys()


def test_missing_markers_are_refused(gen: ModuleType) -> None:
    with pytest.raises(
        gen.GenerationError, match="needs exactly one line <!-- BEGIN GENERATED: settings keys"
    ):
        gen.render_configuration("# Configuration\n", set())
