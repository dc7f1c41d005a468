"""OS errors are usage errors: paths of the wrong kind, unwritable, under /proc or on a full disk (exit 2).

Read-only and full file systems are real mounts (a small tmpfs) when the tests run as root with mount
rights; as another user a read-only directory is a chmod, and the full-disk tests are skipped.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service_ambitions.cli._paths import (
    check_distinct,
    check_readable_dir,
    check_readable_file,
    check_writable_dir,
    check_writable_file,
    describe_os_error,
)
from service_ambitions.content.loader import default_data_dir
from service_ambitions.errors import InputError, PathError
from tests.conftest import read_jsonl, service, write_jsonl

Cli = Callable[..., Any]
MIGRATE_FIXTURE = Path(__file__).parent / "fixtures" / "evolutions_1_0.jsonl"


def _mount_tmpfs(directory: Path, options: str) -> bool:
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def _umount(directory: Path) -> None:
    subprocess.run(["umount", str(directory)], check=False, capture_output=True)


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nothing can be created in: a read-only mount as root, else a mode-0555 directory."""
    directory = tmp_path / "readonly"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield directory
        finally:
            directory.chmod(0o755)
        return
    if not _mount_tmpfs(directory, "ro,size=64k"):
        pytest.skip("root without mount rights: chmod does not stop root, and no read-only mount")
    try:
        yield directory
    finally:
        _umount(directory)


@pytest.fixture
def full_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a file system with no free space left (a tiny tmpfs, filled up)."""
    directory = tmp_path / "full"
    directory.mkdir()
    if not _mount_tmpfs(directory, "size=16k"):
        pytest.skip("needs mount rights for a small tmpfs")
    try:
        fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
        yield directory
    finally:
        _umount(directory)


def _is_device(path: Path) -> bool:
    return stat.S_ISCHR(path.stat().st_mode)


class TestPathChecks:
    """The checks of ``cli/_paths.py`` on their own."""

    def test_distinct_paths_pass(self, isolated: Path) -> None:
        (isolated / "in.jsonl").write_text("", encoding="utf-8")
        check_distinct({"--input-file": Path("in.jsonl"), "--output-file": Path("out.jsonl"), "--x": None})

    @pytest.mark.parametrize("how", ["same", "absolute", "dotted", "symlink", "hardlink"])
    def test_same_file_is_refused_naming_both(self, isolated: Path, how: str) -> None:
        source = isolated / "in.jsonl"
        source.write_text("{}\n", encoding="utf-8")
        other = {
            "same": Path("in.jsonl"),
            "absolute": source,
            "dotted": Path("sub/../in.jsonl"),
            "symlink": isolated / "link.jsonl",
            "hardlink": isolated / "hard.jsonl",
        }[how]
        (isolated / "sub").mkdir()
        (isolated / "link.jsonl").symlink_to(source)
        os.link(source, isolated / "hard.jsonl")
        with pytest.raises(PathError) as caught:
            check_distinct({"--input-file": Path("in.jsonl"), "--output-file": other})
        assert str(caught.value) == f"--output-file {other} is the same file as --input-file in.jsonl"

    def test_outputs_that_do_not_exist_yet_are_compared_by_path(self, isolated: Path) -> None:
        with pytest.raises(PathError, match=r"/out/x\.json is the same file as --output-file out/x\.json$"):
            check_distinct(
                {"--output-file": Path("out/x.json"), "--summary-json": isolated / "out" / "x.json"}
            )

    def test_writable_file(self, isolated: Path) -> None:
        check_writable_file("--output-file", Path("new/deeper/out.jsonl"))  # parents are created on write
        assert not (isolated / "new").exists()  # nothing was created by the check
        (isolated / "old.jsonl").write_text("kept\n", encoding="utf-8")
        check_writable_file("--output-file", Path("old.jsonl"))
        assert (isolated / "old.jsonl").read_text(encoding="utf-8") == "kept\n"
        assert sorted(item.name for item in isolated.iterdir()) == ["old.jsonl"]  # no probe file left

    @pytest.mark.parametrize(
        ("target", "problem"),
        [
            ("adir", "cannot write --output-file adir: it is a directory, not a file"),
            (
                "afile/out.jsonl",
                "cannot write --output-file afile/out.jsonl: {cwd}/afile is a file, not a directory",
            ),
            ("afile/sub/out.jsonl", "{cwd}/afile is a file, not a directory"),
            (
                "/proc/x.jsonl",
                "cannot write --output-file /proc/x.jsonl: it is under /proc, a kernel file system",
            ),
            ("/proc/self/fd/1", "it is under /proc"),
            ("/sys/x.jsonl", "it is under /sys"),
            ("/dev/full", "cannot write --output-file /dev/full: it is a device, not a regular file"),
            ("/dev/null", "it is a device"),
        ],
    )
    def test_unwritable_file_says_why(self, isolated: Path, target: str, problem: str) -> None:
        (isolated / "adir").mkdir()
        (isolated / "afile").write_text("", encoding="utf-8")
        with pytest.raises(PathError) as caught:
            check_writable_file("--output-file", Path(target))
        assert problem.format(cwd=isolated) in str(caught.value)
        assert _is_device(Path("/dev/full"))  # the check never touches what it looks at

    def test_writable_dir(self, isolated: Path) -> None:
        check_writable_dir("--cache-dir", Path("cache/deep"))
        assert not (isolated / "cache").exists()
        (isolated / "afile").write_text("", encoding="utf-8")
        with pytest.raises(PathError, match="cannot write --cache-dir afile: it is a file, not a directory"):
            check_writable_dir("--cache-dir", Path("afile"))
        with pytest.raises(PathError, match=f"cannot write --cache-dir afile/c: {isolated}/afile is a file"):
            check_writable_dir("--cache-dir", Path("afile/c"))
        with pytest.raises(PathError, match="it is under /proc"):
            check_writable_dir("--cache-dir", Path("/proc/cache"))

    def test_readable_file_and_dir(self, isolated: Path) -> None:
        (isolated / "adir").mkdir()
        (isolated / "afile").write_text("", encoding="utf-8")
        check_readable_file("--roles-file", Path("afile"))
        check_readable_file("--input-file", Path("/dev/stdin"))  # a stream is not opened by the check
        check_readable_dir("--data-dir", Path("adir"))
        with pytest.raises(PathError, match=r"--roles-file missing\.json does not exist"):
            check_readable_file("--roles-file", Path("missing.json"))
        with pytest.raises(PathError, match="--roles-file adir is a directory, not a file"):
            check_readable_file("--roles-file", Path("adir"))
        with pytest.raises(PathError, match=f"--roles-file afile/x.json: {isolated}/afile is a file"):
            check_readable_file("--roles-file", Path("afile/x.json"))
        with pytest.raises(InputError, match="--input-file adir is a directory, not a file"):
            check_readable_file("--input-file", Path("adir"), error=InputError)
        with pytest.raises(PathError, match="--data-dir afile is a file, not a directory"):
            check_readable_dir("--data-dir", Path("afile"))
        with pytest.raises(PathError, match="--data-dir nowhere does not exist"):
            check_readable_dir("--data-dir", Path("nowhere"))

    def test_describe_os_error_on_a_full_device(self) -> None:
        with pytest.raises(OSError) as caught, Path("/dev/full").open("wb", buffering=0) as handle:
            handle.write(b"x")  # /dev/full: every write fails with ENOSPC
        assert caught.value.errno == errno.ENOSPC
        assert (
            describe_os_error(caught.value, path=Path("/x/out.jsonl"))
            == "cannot write /x/out.jsonl: No space left on device"
        )

    def test_describe_os_error_names_the_paths_of_the_error(self) -> None:
        exc = OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/out.jsonl")
        assert describe_os_error(exc) == "cannot write /ro/out.jsonl: Read-only file system"
        renamed = OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a/.tmp", None, "/b/out.jsonl")
        assert describe_os_error(renamed, action="replace") == (
            "cannot replace /a/.tmp -> /b/out.jsonl: Invalid cross-device link"
        )
        assert describe_os_error(OSError(errno.EIO, "Input/output error"), action="read") == (
            "cannot read: Input/output error"
        )

    def test_read_only_directory_is_found_by_the_probe(self, readonly_dir: Path) -> None:
        with pytest.raises(
            PathError, match=f"cannot write --output-file {readonly_dir}/out.jsonl: {readonly_dir}"
        ):
            check_writable_file("--output-file", readonly_dir / "out.jsonl")
        with pytest.raises(PathError, match="is not writable"):
            check_writable_dir("--cache-dir", readonly_dir / "cache")

    def test_full_disk_is_found_by_the_probe(self, full_dir: Path) -> None:
        with pytest.raises(PathError, match=r"writing in .*full failed \(No space left on device\)"):
            check_writable_file("--output-file", full_dir / "out.jsonl")
        assert sorted(item.name for item in full_dir.iterdir()) == ["filler"]  # the probe was removed


class TestPreflight:
    def test_ready_creates_nothing(self, cli: Cli, isolated: Path) -> None:
        result = cli("preflight", "--output-file", "out/evolutions.jsonl", "--cache-dir", "cache")
        assert result.exit_code == 0, result.stderr
        assert "ok    writable: --output-file out/evolutions.jsonl" in result.stderr
        assert "ok    writable: --cache-dir cache" in result.stderr
        assert not (isolated / "out").exists()
        assert not (isolated / "cache").exists()

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            (
                ("--output-file", "afile/out.jsonl"),
                "cannot write --output-file afile/out.jsonl: {cwd}/afile is a file",
            ),
            (("--output-file", "adir"), "cannot write --output-file adir: it is a directory, not a file"),
            (
                ("--output-file", "/proc/x.jsonl"),
                "cannot write --output-file /proc/x.jsonl: it is under /proc",
            ),
            (("--output-file", "/dev/full"), "cannot write --output-file /dev/full: it is a device"),
            (("--cache-dir", "afile"), "cannot write --cache-dir afile: it is a file, not a directory"),
            (("--cache-dir", "/sys/cache"), "cannot write --cache-dir /sys/cache: it is under /sys"),
            (
                ("--output-file", "q.jsonl"),
                "cannot write quarantine directory q.jsonl.quarantine: it is a file",
            ),
        ],
    )
    def test_bad_paths_fail_naming_the_path(
        self, cli: Cli, isolated: Path, args: tuple[str, ...], problem: str
    ) -> None:
        (isolated / "adir").mkdir()
        (isolated / "afile").write_text("", encoding="utf-8")
        (isolated / "q.jsonl.quarantine").write_text("", encoding="utf-8")
        result = cli("preflight", *args)
        assert result.exit_code == 2
        assert f"FAIL  {problem.format(cwd=isolated)}" in result.stderr
        assert result.stderr.count("FAIL") == 1  # the quarantine next to a bad output is not reported twice
        assert _is_device(Path("/dev/full"))

    def test_read_only_output_directory(self, cli: Cli, readonly_dir: Path) -> None:
        result = cli("preflight", "--output-file", str(readonly_dir / "out.jsonl"))
        assert result.exit_code == 2
        assert f"FAIL  cannot write --output-file {readonly_dir}/out.jsonl" in result.stderr

    def test_full_disk(self, cli: Cli, full_dir: Path) -> None:
        result = cli("preflight", "--cache-dir", str(full_dir / "cache"))
        assert result.exit_code == 2
        assert f"FAIL  cannot write --cache-dir {full_dir}/cache" in result.stderr
        assert "No space left on device" in result.stderr


def migrate(cli: Cli, source: Path | str, output: Path | str, *extra: str) -> Any:
    return cli("migrate", "--from", "1.0", "--input", str(source), "--output", str(output), *extra)


class TestMigrate:
    @pytest.mark.parametrize(
        ("output", "problem"),
        [
            ("adir", "cannot write output file adir: it is a directory, not a file"),
            (
                "afile/out.jsonl",
                "cannot write output file afile/out.jsonl: {cwd}/afile is a file, not a directory",
            ),
            ("/proc/x.jsonl", "cannot write output file /proc/x.jsonl: it is under /proc"),
            ("/dev/full", "cannot write output file /dev/full: it is a device, not a regular file"),
        ],
    )
    def test_unwritable_output_exits_2_before_reading(
        self, cli: Cli, isolated: Path, output: str, problem: str
    ) -> None:
        (isolated / "adir").mkdir()
        (isolated / "afile").write_text("", encoding="utf-8")
        result = migrate(cli, MIGRATE_FIXTURE, output)
        assert result.exit_code == 2
        assert problem.format(cwd=isolated) in result.stderr
        assert {item.name for item in isolated.iterdir()} <= {"adir", "afile", "xdg-cache"}  # nothing written
        assert _is_device(Path("/dev/full"))  # a rename over it would have replaced the device (as root)

    def test_input_that_is_a_directory_exits_3(self, cli: Cli, isolated: Path) -> None:
        (isolated / "adir").mkdir()
        result = migrate(cli, "adir", "out.jsonl")
        assert result.exit_code == 3
        assert "input file adir is a directory, not a file" in result.stderr

    def test_roles_under_a_file_names_it(self, cli: Cli, isolated: Path) -> None:
        (isolated / "afile").write_text("", encoding="utf-8")
        result = migrate(cli, MIGRATE_FIXTURE, "out.jsonl", "--data-dir", "afile")
        assert result.exit_code == 2
        assert "afile/roles.json: afile is a file, not a directory" in result.stderr
        assert not (isolated / "out.jsonl").exists()

    def test_read_only_output_directory(self, cli: Cli, readonly_dir: Path) -> None:
        result = migrate(cli, MIGRATE_FIXTURE, readonly_dir / "out.jsonl")
        assert result.exit_code == 2
        assert f"cannot write output file {readonly_dir}/out.jsonl" in result.stderr

    def test_full_disk(self, cli: Cli, full_dir: Path) -> None:
        result = migrate(cli, MIGRATE_FIXTURE, full_dir / "out.jsonl")
        assert result.exit_code == 2
        assert f"cannot write output file {full_dir}/out.jsonl" in result.stderr
        assert "No space left on device" in result.stderr


class TestSettings:
    """Malformed settings through the CLI: exit 2 naming the variable or file, never a traceback."""

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("SA_MODELS_RATE_LIMITS", "{bad"),
            ("SA_CONCURRENCY", "abc"),
            ("SA_STAGE_TIMEOUTS", "[1"),
            ("SA_MODELS", "{"),
        ],
    )
    @pytest.mark.parametrize("command", ["preflight", "validate", "run"])
    def test_malformed_environment_value(
        self, cli: Cli, monkeypatch: pytest.MonkeyPatch, command: str, variable: str, value: str
    ) -> None:
        monkeypatch.setenv(variable, value)
        result = cli(command)  # CliRunner(catch_exceptions=False): an uncaught exception fails the test
        assert result.exit_code == (3 if command == "validate" else 2)  # validate: settings are findings
        assert f"environment variable {variable}" in result.stderr
        assert result.stdout == ""

    def test_yaml_with_invalid_utf8(self, cli: Cli, isolated: Path) -> None:
        (isolated / "app.yaml").write_bytes(b"model: offline\nseed: \xff\n")
        result = cli("preflight", "--config", "app.yaml")
        assert result.exit_code == 2
        assert "app.yaml:2: not valid UTF-8" in result.stderr

    def test_config_that_is_a_directory(self, cli: Cli, isolated: Path) -> None:
        (isolated / "conf").mkdir()
        result = cli("run", "--config", "conf")
        assert result.exit_code == 2
        assert "config file conf is a directory, not a file" in result.stderr

    def test_dotenv_with_invalid_utf8(self, cli: Cli, isolated: Path) -> None:
        # needs llm/providers.py to read .env through settings.read_dotenv (see the report)
        (isolated / ".env").write_bytes(b"SA_SEED=1\nOPENAI_API_KEY=\xff\n")
        result = cli("preflight")
        assert result.exit_code == 2
        assert ".env:2: not valid UTF-8" in result.stderr


class TestContent:
    """A data directory with a file nested too deeply, not UTF-8, a directory; a data dir that is a file."""

    @pytest.fixture
    def data(self, isolated: Path) -> Path:
        directory = isolated / "data"
        shutil.copytree(default_data_dir(), directory)
        return directory

    @pytest.mark.parametrize(
        ("name", "content", "problem"),
        [
            ("roles.json", b"[" * 100_000, "data/roles.json: invalid JSON: nested too deeply"),
            ("technologies.json", b'{"items": [\n"caf\xe9"]}', "data/technologies.json:2: not valid UTF-8"),
            ("definitions.json", None, "data/definitions.json is a directory, not a file"),
        ],
    )
    @pytest.mark.parametrize("command", [("preflight",), ("run", "--dry-run")])
    def test_bad_data_file_is_named(
        self, cli: Cli, data: Path, command: tuple[str, ...], name: str, content: bytes | None, problem: str
    ) -> None:
        write_jsonl(data.parent / "services.jsonl", [service("A")])
        (data / name).unlink()
        if content is None:
            (data / name).mkdir()
        else:
            (data / name).write_bytes(content)
        result = cli(*command, "--data-dir", "data")
        assert result.exit_code == 2
        assert problem in result.stderr

    def test_data_dir_that_is_a_file(self, cli: Cli, isolated: Path) -> None:
        (isolated / "afile").write_text("", encoding="utf-8")
        result = cli("preflight", "--data-dir", "afile")
        assert result.exit_code == 2
        assert "data directory afile is a file, not a directory" in result.stderr

    def test_prompt_file_that_is_a_directory(self, cli: Cli, isolated: Path) -> None:
        write_jsonl(isolated / "services.jsonl", [service("A")])
        prompts = isolated / "prompts"
        shutil.copytree(default_data_dir().parent / "prompts", prompts)
        (prompts / "features_prompt.md").unlink()
        (prompts / "features_prompt.md").mkdir()
        result = cli("run", "--dry-run", "--prompt-dir", "prompts")
        assert result.exit_code == 2
        assert "prompts/features_prompt.md is a directory, not a file" in result.stderr


class TestRunPaths:
    """``run``'s up-front path checks (wired in cli/run.py): exit 2 naming the path, nothing written."""

    @pytest.fixture
    def services(self, isolated: Path) -> Path:
        path = write_jsonl(isolated / "services.jsonl", [service("A")])
        (isolated / "adir").mkdir()
        (isolated / "afile").write_text("", encoding="utf-8")
        return path

    def _refused(self, cli: Cli, services: Path, *args: str) -> Any:
        before = services.read_bytes()
        result = cli("run", "--input-file", "services.jsonl", *args)
        assert result.exit_code == 2, result.stderr
        assert result.stdout == ""
        assert services.read_bytes() == before
        return result

    @pytest.mark.parametrize(
        ("args", "problem"),
        [
            (("--output-file", "afile/out.jsonl"), "afile/out.jsonl: {cwd}/afile is a file, not a directory"),
            (("--output-file", "adir"), "--output-file adir: it is a directory, not a file"),
            (("--output-file", "/proc/x.jsonl"), "--output-file /proc/x.jsonl: it is under /proc"),
            (("--output-file", "/dev/full"), "--output-file /dev/full: it is a device"),
            (("--summary-json", "adir"), "--summary-json adir: it is a directory, not a file"),
            (("--summary-json", "afile/s.json"), "--summary-json afile/s.json: {cwd}/afile is a file"),
            (("--summary-json", "/dev/null"), "--summary-json /dev/null: it is a device"),
            (("--cache-dir", "afile"), "--cache-dir afile: it is a file, not a directory"),
        ],
    )
    def test_unwritable_path(
        self, cli: Cli, isolated: Path, services: Path, args: tuple[str, ...], problem: str
    ) -> None:
        result = self._refused(cli, services, *args)
        assert problem.format(cwd=isolated) in result.stderr
        assert not (isolated / "evolutions.jsonl").exists()
        assert _is_device(Path("/dev/full"))
        assert _is_device(Path("/dev/null"))

    @pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
    def test_output_that_is_the_input_is_refused(
        self, cli: Cli, isolated: Path, services: Path, how: str
    ) -> None:
        output = {"same": "services.jsonl", "symlink": "link.jsonl", "hardlink": "hard.jsonl"}[how]
        (isolated / "link.jsonl").symlink_to(services)
        os.link(services, isolated / "hard.jsonl")
        result = self._refused(cli, services, "--output-file", output)
        message = result.stderr.strip().splitlines()[-1]
        assert " is the same file as " in message
        assert f"--output-file {output}" in message
        assert "--input-file services.jsonl" in message
        assert read_jsonl(services)[0]["service_id"] == "A"

    @pytest.mark.parametrize("target", ["services.jsonl", "out.jsonl"])
    def test_summary_that_is_the_input_or_output_is_refused(
        self, cli: Cli, isolated: Path, services: Path, target: str
    ) -> None:
        result = self._refused(cli, services, "--output-file", "out.jsonl", "--summary-json", target)
        message = result.stderr.strip().splitlines()[-1]
        assert " is the same file as " in message
        assert f"--summary-json {target}" in message
        assert not (isolated / "out.jsonl").exists()

    def test_read_only_output_directory(self, cli: Cli, services: Path, readonly_dir: Path) -> None:
        result = self._refused(cli, services, "--output-file", str(readonly_dir / "out.jsonl"))
        assert f"{readonly_dir}/out.jsonl" in result.stderr

    def test_full_disk(self, cli: Cli, services: Path, full_dir: Path) -> None:
        result = self._refused(cli, services, "--output-file", str(full_dir / "out.jsonl"))
        assert f"{full_dir}/out.jsonl" in result.stderr
        assert "No space left on device" in result.stderr
