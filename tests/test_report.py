"""``report``: the static site of a sample run, rendered by a real headless Chromium; its output directory.

The browser tests share one sample run, one site and one browser for the module. Chromium comes from the
distribution (``make browser`` installs it); without it they are skipped, and fail under ``CI``.
``REPORT_SCREENSHOTS=docs/images`` also saves the README's screenshots there.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service_ambitions.cli.app import app
from service_ambitions.content import loader
from service_ambitions.domain.output import ServiceEvolution
from service_ambitions.report._outdir import MANIFEST
from service_ambitions.store.reader import iter_evolutions
from tests.conftest import PROVIDER_VARIABLES, ROOT, SAMPLES, service, write_jsonl

Cli = Callable[..., Any]

HOSTILE_NAME = '<script>alert("x")</script> & <b>bold</b> "quoted"'
HOSTILE_ID = "SVC/ÉTÉ <1>"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Sample:
    """A sample run and its report."""

    output: Path
    summary: Path
    site: Path
    records: list[ServiceEvolution]
    clean_site: Path
    """The bundled samples alone, with their run summary: what the README's screenshots show."""


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result


def make_run(directory: Path, services: list[Any]) -> tuple[Path, Path]:
    """Run the offline model over ``services`` into ``directory``; returns the output and the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    source = write_jsonl(directory / "services.jsonl", services)
    output, summary = directory / "evolutions.jsonl", directory / "summary.json"
    _invoke(
        "run",
        "--model",
        "offline",
        "--input-file",
        str(source),
        "--output-file",
        str(output),
        "--summary-json",
        str(summary),
        "--cache-mode",
        "off",
        "--no-progress",
    )
    return output, summary


def subset(source: Path, count: int, target: Path) -> Path:
    """An evolutions file with the header and the first ``count`` records of ``source``.

    (The pipeline cannot run in this module once the browser is up: Playwright's sync API holds a loop.)
    """
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(lines[: 1 + count]), encoding="utf-8")
    return target


def records_of(path: Path) -> list[ServiceEvolution]:
    return [item for item in iter_evolutions(path) if isinstance(item, ServiceEvolution)]


def sample_services() -> list[Any]:
    lines: list[Any] = SAMPLES.read_text(encoding="utf-8").splitlines()
    return [*lines, service(HOSTILE_ID, name=HOSTILE_NAME), "{not json"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sample]:
    """The bundled samples plus a hostile service and an invalid line, run offline, then reported."""
    directory = tmp_path_factory.mktemp("sample")
    with pytest.MonkeyPatch.context() as patch:  # what the function-scoped `isolated` fixture does
        for name in list(os.environ):
            if name.startswith("SA_") or name in PROVIDER_VARIABLES:
                patch.delenv(name)
        patch.setenv("XDG_CACHE_HOME", str(directory / "xdg-cache"))
        patch.chdir(directory)
        output, summary = make_run(directory, sample_services())
        site = directory / "site"
        _invoke(
            "report", "--input-file", str(output), "--output-dir", str(site), "--summary-json", str(summary)
        )
        clean, clean_summary = make_run(directory / "clean", SAMPLES.read_text(encoding="utf-8").splitlines())
        clean_site = directory / "clean-site"
        _invoke(
            "report",
            "--input-file",
            str(clean),
            "--output-dir",
            str(clean_site),
            "--summary-json",
            str(clean_summary),
        )
        yield Sample(
            output=output, summary=summary, site=site, records=records_of(output), clean_site=clean_site
        )


def chromium_path() -> str | None:
    candidate = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    return candidate if os.access(candidate, os.X_OK) else shutil.which("chromium")


@pytest.fixture(scope="module")
def browser(sample: Sample) -> Iterator[Any]:
    """One headless Chromium for the module (the distribution's, never a downloaded build).

    Started after ``sample``: the pipeline's event loop cannot start inside Playwright's.
    """
    executable = chromium_path()
    if executable is None:
        message = "Chromium is not installed: `make browser` installs it (apt-get, as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright  # noqa: PLC0415  (only when a browser is there)

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        context = launched.new_context(viewport={"width": 1280, "height": 1000}, offline=True)
        yield context
        context.close()
        launched.close()


@dataclass
class Visit:
    """A page opened in the browser, with what went wrong while it loaded."""

    page: Any
    problems: list[str]


@pytest.fixture(scope="module")
def tab(browser: Any) -> Iterator[Callable[[str], Visit]]:
    """Open URLs in one reused page; each visit lists console errors, page errors, failed loads, dialogs."""
    page = browser.new_page()
    problems: list[str] = []

    def on_console(message: Any) -> None:
        if message.type in {"error", "warning"}:
            problems.append(f"console {message.type}: {message.text}")

    def on_dialog(dialog: Any) -> None:
        problems.append(f"dialog: {dialog.message}")  # an alert() would mean a script got through
        dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"failed to load {request.url}"))
    page.on("dialog", on_dialog)

    def visit(url: str) -> Visit:
        problems.clear()
        page.goto(url, wait_until="load")
        return Visit(page=page, problems=problems)

    yield visit
    page.close()


def service_pages(site: Path) -> list[Path]:
    return sorted((site / "services").glob("*.html"))


def used_items(records: list[ServiceEvolution], field: str) -> Counter[str]:
    """Features each item of ``field`` supports, over every plateau."""
    counts: Counter[str] = Counter()
    for record in records:
        for plateau in record.plateaus:
            for feature in plateau.features:
                counts.update({item.item for item in feature.mappings.get(field, [])})
    return counts


# --- the browser -------------------------------------------------------------------------------------


def test_index_shows_every_service_without_errors(sample: Sample, tab: Callable[[str], Visit]) -> None:
    visit = tab((sample.site / "index.html").as_uri())
    assert visit.problems == []
    rows = visit.page.eval_on_selector_all(
        "#service-table tbody tr th a", "links => links.map(a => [a.textContent, a.getAttribute('href')])"
    )
    assert [name for name, _ in rows] == [record.service.name for record in sample.records]
    assert HOSTILE_NAME in [name for name, _ in rows]  # the markup is text, not elements
    assert all(href.startswith("services/") and href.endswith(".html") for _, href in rows)
    scripts = visit.page.eval_on_selector_all("script", "nodes => nodes.map(s => s.getAttribute('src'))")
    assert scripts == ["assets/report.js"]
    assert visit.page.locator("b", has_text="bold").count() == 0
    ids = visit.page.eval_on_selector_all("#service-table .id", "cells => cells.map(c => c.textContent)")
    assert HOSTILE_ID in ids
    run = visit.page.inner_text("#run")
    assert "Cost" in run
    assert "USD" in run
    assert sample.records[0].service.name in visit.page.inner_text("#services")
    quarantine = visit.page.inner_text("#quarantine")
    assert "input_invalid" in quarantine


def test_every_internal_link_resolves(sample: Sample, tab: Callable[[str], Visit]) -> None:
    pages = [sample.site / "index.html", *service_pages(sample.site)]
    assert len(pages) == 1 + len(sample.records)
    ids: dict[str, set[str]] = {}
    links: list[tuple[str, str]] = []
    for path in pages:
        visit = tab(path.as_uri())
        assert visit.problems == [], path
        ids[path.as_uri()] = set(visit.page.eval_on_selector_all("[id]", "nodes => nodes.map(n => n.id)"))
        targets = visit.page.eval_on_selector_all(
            "a[href], link[href], script[src]",
            "nodes => nodes.map(n =>"
            " new URL(n.getAttribute('href') ?? n.getAttribute('src'), document.baseURI).href)",
        )
        links += [(path.name, target) for target in targets]
    assert links
    for source, target in links:
        if target.startswith("data:"):
            continue
        assert target.startswith("file://"), f"{source} links outside the site: {target}"
        document, _, fragment = target.partition("#")
        file = Path(document.removeprefix("file://"))
        assert file.is_file(), f"{source}: {target} does not exist"
        assert file.is_relative_to(sample.site)
        if fragment:
            assert fragment in ids[document], f"{source}: no id {fragment!r} in {file.name}"


def test_heatmap_has_one_row_per_used_item(sample: Sample, tab: Callable[[str], Visit]) -> None:
    page = tab((sample.site / "index.html").as_uri()).page
    for field in ("applications", "technologies", "data"):
        expected = used_items(sample.records, field)
        rows = page.eval_on_selector_all(
            f"svg.heatmap[data-field={field}] g.hm-row",
            "rows => rows.map(r => [r.dataset.item,"
            " [...r.querySelectorAll('text.cell')].map(t => +t.textContent)])",
        )
        assert len(rows) == len(expected) > 0
        assert {item for item, _ in rows} == set(expected)
        assert [sum(cells) for _, cells in rows] == sorted((sum(cells) for _, cells in rows), reverse=True)
        assert {item: sum(cells) for item, cells in rows} == dict(expected)


def test_filter_box_works_offline(sample: Sample, tab: Callable[[str], Visit]) -> None:
    page = tab((sample.site / "index.html").as_uri()).page
    assert page.is_visible("#filter")
    page.fill("#filter", "library")
    visible = page.eval_on_selector_all(
        "#service-table tbody tr", "rows => rows.filter(r => !r.hidden).length"
    )
    assert visible == sum("library" in record.service.name.lower() for record in sample.records) >= 1
    assert "of" in page.inner_text("#filter-count")
    faded = page.eval_on_selector_all("g.hm-row.faded", "rows => rows.length")
    assert faded > 0
    page.fill("#filter", "")
    visible = page.eval_on_selector_all(
        "#service-table tbody tr", "rows => rows.filter(r => !r.hidden).length"
    )
    assert visible == len(sample.records)


_PIXELS = """async (data) => {
  const image = new Image();
  image.src = "data:image/png;base64," + data;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  let ink = 0, seen = 0;
  for (let i = 0; i < pixels.length; i += 4 * 5) {
    const colour = (pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2];
    colours.add(colour);
    seen += 1;
    if (colour !== 0xffffff) ink += 1;
  }
  return {colours: colours.size, ink: ink / seen};
}"""


def test_screenshots_are_not_blank(sample: Sample, browser: Any, tab: Callable[[str], Visit]) -> None:
    pages = {
        "report-index.png": sample.clean_site / "index.html",
        "report-service.png": sample.clean_site / "services" / "SVC-ADM-001.html",
    }
    shots: dict[str, bytes] = {}
    for name, path in pages.items():
        visit = tab(path.as_uri())
        assert visit.problems == []
        height = min(2000, visit.page.evaluate("document.documentElement.scrollHeight"))
        shots[name] = visit.page.screenshot(
            full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": height}
        )
    blank = browser.new_page()
    try:
        for name, png in shots.items():
            measured = blank.evaluate(_PIXELS, base64.b64encode(png).decode())
            assert measured["colours"] > 50, name
            assert measured["ink"] > 0.05, name
    finally:
        blank.close()
    target = os.environ.get("REPORT_SCREENSHOTS")
    if target:  # REPORT_SCREENSHOTS=docs/images: refresh the README's screenshots
        directory = ROOT / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, png in shots.items():
            (directory / name).write_bytes(png)


# --- the files ---------------------------------------------------------------------------------------


def test_values_are_escaped_in_the_html(sample: Sample) -> None:
    index = (sample.site / "index.html").read_text(encoding="utf-8")
    assert "<script>alert" not in index
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in index
    page = next(path for path in service_pages(sample.site) if path.name.startswith("SVC_ETE_1-"))
    assert "<script>alert" not in page.read_text(encoding="utf-8")
    assert page.name.endswith(".html")
    assert "/" not in page.name.removesuffix(".html")


def test_site_is_self_contained_and_reproducible(sample: Sample, cli: Cli, isolated: Path) -> None:
    files = sorted(
        path.relative_to(sample.site).as_posix() for path in sample.site.rglob("*") if path.is_file()
    )
    manifest = json.loads((sample.site / MANIFEST).read_text(encoding="utf-8"))
    assert sorted([*manifest["files"], MANIFEST]) == files
    assert {"index.html", "assets/report.css", "assets/report.js"} <= set(files)
    for name in files:
        text = (sample.site / name).read_text(encoding="utf-8")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text
    again = isolated / "again"
    result = cli(
        "report",
        "--input-file",
        str(sample.output),
        "--output-dir",
        str(again),
        "--summary-json",
        str(sample.summary),
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    for name in files:
        assert (again / name).read_bytes() == (sample.site / name).read_bytes(), name


def test_output_dir_is_never_taken_over(sample: Sample, cli: Cli, isolated: Path) -> None:
    output = subset(sample.output, 3, isolated / "three.jsonl")
    mine = isolated / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")

    refused = cli("report", "--input-file", str(output), "--output-dir", str(mine))
    assert refused.exit_code == 2
    assert "--force" in refused.stderr
    assert sorted(path.name for path in mine.iterdir()) == ["notes.txt"]

    forced = cli("report", "--input-file", str(output), "--output-dir", str(mine), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert len(service_pages(mine)) == 3

    # a previous report is replaced: pages of services that left the file go, other files stay
    smaller = subset(sample.output, 1, isolated / "one.jsonl")
    replaced = cli("report", "--input-file", str(smaller), "--output-dir", str(mine))
    assert replaced.exit_code == 0, replaced.stderr
    assert len(service_pages(mine)) == 1
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert not [path for path in mine.iterdir() if path.name.startswith(".sa-report-staging-")]


def test_bad_input_changes_nothing(sample: Sample, cli: Cli, isolated: Path) -> None:
    output = subset(sample.output, 2, isolated / "two.jsonl")
    site = isolated / "site"
    assert cli("report", "--input-file", str(output), "--output-dir", str(site)).exit_code == 0
    before = {path: path.read_bytes() for path in site.rglob("*") if path.is_file()}

    torn = isolated / "torn.jsonl"
    content = output.read_text(encoding="utf-8").splitlines()
    torn.write_text("\n".join([*content, '{"schema_version": "1.1"}']) + "\n", encoding="utf-8")
    invalid = cli("report", "--input-file", str(torn), "--output-dir", str(site))
    assert invalid.exit_code == 3
    assert "torn.jsonl:4" in invalid.stderr
    assert {path: path.read_bytes() for path in site.rglob("*") if path.is_file()} == before

    missing = cli("report", "--input-file", str(isolated / "nope.jsonl"), "--output-dir", str(site))
    assert missing.exit_code == 3
    assert "does not exist" in missing.stderr
    bad_summary = isolated / "summary.txt"
    bad_summary.write_text("not json", encoding="utf-8")
    summary = cli(
        "report", "--input-file", str(output), "--output-dir", str(site), "--summary-json", str(bad_summary)
    )
    assert summary.exit_code == 3
    a_file = isolated / "a-file"
    a_file.write_text("x", encoding="utf-8")
    assert cli("report", "--input-file", str(output), "--output-dir", str(a_file)).exit_code == 2
    empty = isolated / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert cli("report", "--input-file", str(empty), "--output-dir", str(isolated / "x")).exit_code == 3
    assert not (isolated / "x").exists()


def test_labels_come_from_the_records_when_the_catalogues_differ(
    sample: Sample, cli: Cli, isolated: Path
) -> None:
    output = subset(sample.output, 1, isolated / "one.jsonl")
    other = isolated / "data"
    other.mkdir()
    matching = cli("report", "--input-file", str(output), "--output-dir", str(isolated / "a"))
    assert matching.exit_code == 0
    assert "Change type" in (isolated / "a" / "index.html").read_text(encoding="utf-8")
    differing = cli(
        "report", "--input-file", str(output), "--output-dir", str(isolated / "b"), "--data-dir", str(other)
    )
    assert differing.exit_code == 0
    assert "catalogue labels not used" in differing.stderr
    index = (isolated / "b" / "index.html").read_text(encoding="utf-8")
    assert "catalogues not found" in index
    assert "Change type" in index  # derived from the facet id change_type

    edited = isolated / "edited"
    shutil.copytree(loader.default_data_dir(), edited)
    applications = json.loads((edited / "applications.json").read_text(encoding="utf-8"))
    applications["facets"][1]["options"][-1]["label"] = "Greenfield"  # new_build, relabelled
    (edited / "applications.json").write_text(json.dumps(applications), encoding="utf-8")
    changed = cli(
        "report", "--input-file", str(output), "--output-dir", str(isolated / "c"), "--data-dir", str(edited)
    )
    assert changed.exit_code == 0
    assert "differ from the run's" in changed.stderr
    index = (isolated / "c" / "index.html").read_text(encoding="utf-8")
    assert "the catalogues differ from the run&#39;s" in index  # escaped
    assert "Greenfield" not in index


def copies(source: Path, count: int, target: Path) -> Path:
    """An evolutions file with ``count`` records: those of ``source`` repeated, each under its own id."""
    header, *lines = source.read_text(encoding="utf-8").splitlines()
    out = [header]
    for number in range(count):
        record = json.loads(lines[number % len(lines)])
        record["service"]["service_id"] = f"{record['service']['service_id']}-{number}"
        out.append(json.dumps(record))
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    return target


def terminate_when(command: list[str], started: Callable[[], bool]) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a real process, send SIGTERM once ``started()`` holds, and wait for it to end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service_ambitions", *command], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not started() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the command ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, "", stderr)


def test_sigterm_leaves_nothing_behind(sample: Sample, isolated: Path) -> None:
    big = copies(sample.output, 300, isolated / "big.jsonl")
    site = isolated / "new" / "site"

    def staged_a_page() -> bool:
        return any(site.glob(".sa-report-staging-*/services/*.html"))

    result = terminate_when(["report", "--input-file", str(big), "--output-dir", str(site)], staged_a_page)
    assert result.returncode == 130, result.stderr
    assert "nothing was changed" in result.stderr
    assert sorted(path.name for path in isolated.iterdir()) == ["big.jsonl"]  # new/ and new/site/ removed too

    # a previous report stays as it was, and no staging directory is left for the next report to clean
    small = subset(sample.output, 2, isolated / "two.jsonl")
    _invoke("report", "--input-file", str(small), "--output-dir", str(site))
    before = {path: path.read_bytes() for path in site.rglob("*") if path.is_file()}
    again = terminate_when(["report", "--input-file", str(big), "--output-dir", str(site)], staged_a_page)
    assert again.returncode == 130, again.stderr
    assert {path: path.read_bytes() for path in site.rglob("*") if path.is_file()} == before


def test_quiet_and_failures_into_a_new_dir(sample: Sample, cli: Cli, isolated: Path) -> None:
    output = subset(sample.output, 1, isolated / "one.jsonl")
    quiet = cli("report", "-q", "--input-file", str(output), "--output-dir", str(isolated / "q"))
    assert quiet.exit_code == 0
    assert (quiet.stdout, quiet.stderr) == ("", "")
    assert (isolated / "q" / "index.html").is_file()

    torn = isolated / "torn.jsonl"
    torn.write_text(output.read_text(encoding="utf-8") + "{not json}\n", encoding="utf-8")
    failed = cli("report", "--input-file", str(torn), "--output-dir", str(isolated / "new" / "site"))
    assert failed.exit_code == 3
    assert "torn.jsonl:3" in failed.stderr
    assert not (isolated / "new").exists()
