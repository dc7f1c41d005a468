"""``build_site``: a static HTML report of an evolutions file, streamed one record at a time.

Each record is read with :func:`~service_ambitions.store.reader.iter_evolutions`, rendered into its own
page, folded into the :class:`~service_ambitions.report.aggregate.Portfolio` and dropped, so memory holds one
service plus the aggregates. The index is rendered last, from the aggregates only. Templates are Jinja2 with
autoescaping on for every value; charts are inline SVG drawn by the templates; CSS and the filter script are
files beside the pages, so the site works from the file system without a network.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from service_ambitions import __version__
from service_ambitions.domain.output import Header, ServiceEvolution
from service_ambitions.errors import InputError
from service_ambitions.report._charts import LegendEntry, heat_legend
from service_ambitions.report._labels import Labels, load_labels
from service_ambitions.report._names import PageNames, anchor
from service_ambitions.report._outdir import ReportDir
from service_ambitions.report._service import service_page
from service_ambitions.report._views import (
    BAR_LABEL,
    BAR_WIDTH,
    CELL_HEIGHT,
    CELL_WIDTH,
    LABEL_WIDTH,
    heatmaps,
    level_cell,
    plateau_bars,
    role_rows,
)
from service_ambitions.report.aggregate import Portfolio
from service_ambitions.store.quarantine import QuarantineStore, quarantine_dir_for
from service_ambitions.store.reader import iter_evolutions

__all__ = ["SiteResult", "build_site"]

ASSETS = ("report.css", "report.js")
QUARANTINE_LISTED = 50
"""Entries listed on the index; the counts cover all of them."""
ERROR_CHARS = 300
LEVEL_NAMES = {1: "Initial", 2: "Managed", 3: "Defined", 4: "Quantitatively Managed", 5: "Optimizing"}


@dataclass(frozen=True)
class SiteResult:
    """What :func:`build_site` wrote."""

    output_dir: Path
    index: Path
    services: int
    files: int
    quarantine_entries: int


@dataclass
class _Quarantine:
    """The quarantine beside the input file, summarised."""

    directory: Path
    total: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_stage: Counter[str] = field(default_factory=Counter)
    listed: list[tuple[str, str, str, str]] = field(default_factory=list)
    by_service: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


def _short(text: str, limit: int = ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_quarantine(input_file: Path) -> _Quarantine | None:
    directory = quarantine_dir_for(input_file)
    if not directory.is_dir():
        return None
    summary = _Quarantine(directory=directory)
    for entry in QuarantineStore(directory).entries():
        summary.total += 1
        summary.by_kind[entry.kind] += 1
        summary.by_stage[entry.stage] += 1
        service = entry.service_id or (f"input line {entry.line}" if entry.line else "-")
        if len(summary.listed) < QUARANTINE_LISTED:
            summary.listed.append((service, entry.stage, entry.kind, _short(entry.error)))
        if entry.service_id is not None:
            summary.by_service.setdefault(entry.service_id, []).append(
                (entry.stage, entry.kind, _short(entry.error))
            )
    return summary


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read --summary-json {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"--summary-json {path} is not a JSON run summary: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"--summary-json {path} is not a JSON run summary (not an object)")
    return data


def _dig(data: dict[str, Any], *keys: str) -> Any:
    node: Any = data
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _summary_facts(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The run summary's counts and cost, as label/value pairs (only those the summary has)."""
    facts: list[tuple[str, str]] = []
    services = _dig(summary, "services")
    if isinstance(services, dict):
        parts = [f"{services.get(key, 0)} {word}" for key, word in (("ok", "ok"), ("failed", "failed"))]
        if services.get("input_invalid"):
            parts.append(f"{services['input_invalid']} invalid input line(s)")
        facts.append(("Services", ", ".join(parts)))
    if _dig(summary, "quarantined") is not None:
        facts.append(("Quarantined", str(summary["quarantined"])))
    calls = _dig(summary, "model_calls", "calls")
    if calls is not None:
        details = [
            f"{value} {word}"
            for value, word in (
                (_dig(summary, "model_calls", "requests"), "request(s)"),
                (_dig(summary, "cache", "hits"), "cache hit(s)"),
                (_dig(summary, "model_calls", "output_reasks"), "re-ask(s)"),
                (_dig(summary, "model_calls", "fallbacks"), "fallback(s)"),
            )
            if value is not None
        ]
        facts.append(("Model calls", f"{calls} ({', '.join(details)})" if details else str(calls)))
    tokens_in, tokens_out = _dig(summary, "tokens", "input"), _dig(summary, "tokens", "output")
    if tokens_in is not None or tokens_out is not None:
        facts.append(("Tokens", f"{tokens_in or 0} in, {tokens_out or 0} out"))
    total = _dig(summary, "cost", "total_usd")
    if total is not None:
        text = f"{_dig(summary, 'cost', 'currency') or 'USD'} {total}"
        if _dig(summary, "cost", "complete") is False:
            text += f" (incomplete: {_dig(summary, 'cost', 'unpriced_calls') or 'some'} unpriced call(s))"
        facts.append(("Cost", text))
    if _dig(summary, "wall_seconds") is not None:
        facts.append(("Wall time", f"{summary['wall_seconds']} s"))
    if _dig(summary, "interrupted"):
        facts.append(("Interrupted", "yes: the file holds the records finished before the stop"))
    return facts


def _header_facts(header: Header, labels: Labels) -> list[tuple[str, str, str]]:
    """``(label, shown, full)`` for the header; ``full`` goes into a tooltip when ``shown`` is shortened."""
    tool = f"service-ambitions {header.tool_version}"
    facts = [
        ("Run id", header.run_id, header.run_id),
        ("Schema", header.schema_version, header.schema_version),
        ("Tool", tool + (f" ({header.git_sha[:12]})" if header.git_sha else ""), header.git_sha or tool),
    ]
    models = ", ".join(f"{stage}: {model}" for stage, model in header.models.items())
    facts.append(("Models", models, models))
    if header.synthetic:
        facts.append(("Synthetic", "yes: answers from the offline model", "offline model configured"))
    sets = ", ".join(labels.set_label(name) for name in header.mapping_sets)
    facts += [
        ("Mapping sets", sets, ", ".join(header.mapping_sets)),
        ("Catalogue hash", header.catalogue_hash[:16] + "…", header.catalogue_hash),
        ("Input digest", header.input_digest[:16] + "…", header.input_digest),
    ]
    if header.seed is not None:
        facts.append(("Seed", str(header.seed), str(header.seed)))
    if header.migrated_from:
        facts.append(("Migrated from", f"{len(header.migrated_from)} run(s) of schema 1.0", ""))
    facts.append(("Labels from", labels.source, labels.source))
    return facts


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("service_ambitions.report", "templates"),
        autoescape=True,  # every value, whatever the template's extension
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.globals.update(
        version=__version__,
        level_names=LEVEL_NAMES,
        level_legend=[LegendEntry(f"l{level}", f"{level} {name}") for level, name in LEVEL_NAMES.items()],
        geometry={
            "label": LABEL_WIDTH,
            "cell": CELL_WIDTH,
            "height": CELL_HEIGHT,
            "bar": BAR_WIDTH,
            "bar_label": BAR_LABEL,
        },
    )
    return environment


def _asset(name: str) -> str:
    return (resources.files("service_ambitions.report") / "static" / name).read_text(encoding="utf-8")


def build_site(
    input_file: Path,
    output_dir: Path,
    *,
    summary_json: Path | None = None,
    data_dir: Path | None = None,
    force: bool = False,
) -> SiteResult:
    """Write ``index.html``, one page per service under ``services/``, and ``assets/`` into ``output_dir``.

    Args:
        input_file: An evolutions file (schema 1.1); its quarantine directory is summarised when present.
        output_dir: Created when missing; a previous report in it is replaced (see ``ReportDir``).
        summary_json: The run's ``--summary-json``, for cost and counts.
        data_dir: Where the run's catalogues are, for facet labels (default: the bundled data).
        force: Write into a non-empty directory that holds no report (its other files are kept).

    Raises:
        InputError: The input or the summary is missing or invalid (nothing is changed on disk).
        PathError: The output directory cannot be used.
    """
    summary = _read_summary(summary_json) if summary_json is not None else None
    items = iter_evolutions(input_file)
    header = next(items, None)
    if not isinstance(header, Header):
        raise InputError(f"{input_file}: empty file, no header line")
    labels = load_labels(header, data_dir)
    quarantine = _read_quarantine(input_file)
    environment = _environment()
    site = ReportDir(output_dir, force=force)
    try:
        portfolio = Portfolio(header=header)
        names = PageNames()
        template = environment.get_template("service.html.j2")
        for record in items:
            if not isinstance(record, ServiceEvolution):  # the reader yields a header on line 1 only
                continue
            page = names.name(record.service.service_id)
            warnings = quarantine.by_service.get(record.service.service_id, []) if quarantine else []
            view = service_page(record, labels, index_href="../index.html", warnings=warnings)
            site.write(f"services/{page}", template.render(page=view, header=header, root="../"))
            row_anchor = anchor("svc", page.removesuffix(".html"))
            portfolio.add(record, href=f"services/{page}", anchor=row_anchor, warnings=len(warnings))
        recorded = {row.service_id for row in portfolio.services}
        failed = sorted(set(quarantine.by_service) - recorded) if quarantine else []
        roles = role_rows(portfolio)
        index = environment.get_template("index.html.j2").generate(
            header=header,
            root="",
            facts=_header_facts(header, labels),
            summary=_summary_facts(summary) if summary is not None else None,
            portfolio=portfolio,
            levels=sorted(portfolio.plateaus),
            roles=roles,
            role_legend=[LegendEntry(row.css, row.name) for row in roles if row.role_id],
            bars=plateau_bars(portfolio),
            heatmaps=heatmaps(portfolio, labels),
            level_cell=level_cell,
            heat_legend=heat_legend,
            quarantine=quarantine,
            failed=failed,
        )
        site.write("index.html", index)
        for name in ASSETS:
            site.write(f"assets/{name}", _asset(name))
        files = len(site.written)
        site.commit(
            {
                "generator": "service-ambitions report",
                "tool_version": __version__,
                "run_id": header.run_id,
                "services": len(portfolio.services),
            }
        )
    except BaseException:
        site.discard()
        raise
    return SiteResult(
        output_dir=output_dir,
        index=output_dir / "index.html",
        services=len(portfolio.services),
        files=files,
        quarantine_entries=quarantine.total if quarantine else 0,
    )
