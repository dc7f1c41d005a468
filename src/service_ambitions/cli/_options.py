"""Options shared by the commands that run the pipeline (``run``, ``map``, ``reverse``), defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

__all__ = [
    "BudgetMode",
    "CacheMode",
    "AllowPromptLoggingOption",
    "BudgetModeOption",
    "CacheDirOption",
    "ConcurrencyOption",
    "ContextIdOption",
    "DescriptionsModelOption",
    "FeaturesModelOption",
    "InspirationOption",
    "LlmConcurrencyOption",
    "MappingModelOption",
    "ProgressOption",
    "RunBudgetUsdOption",
    "StrictOption",
    "SummaryJsonOption",
    "TraceIdsOption",
]

CacheMode = Literal["off", "read", "refresh", "write"]
BudgetMode = Literal["warn", "enforce"]

AllowPromptLoggingOption = Annotated[
    bool,
    typer.Option("--allow-prompt-logging", help="Log prompts and answers at debug level (-vv), redacted."),
]
BudgetModeOption = Annotated[
    BudgetMode | None,
    typer.Option(
        "--budget-mode", help="warn: log when the budget is passed; enforce: stop admitting, exit 4."
    ),
]
CacheDirOption = Annotated[Path | None, typer.Option("--cache-dir", help="Response cache directory.")]
ConcurrencyOption = Annotated[int | None, typer.Option("--concurrency", help="Services processed at once.")]
ContextIdOption = Annotated[
    str | None, typer.Option("--context-id", help="Situational context file name (without .md).")
]
DescriptionsModelOption = Annotated[
    str | None, typer.Option("--descriptions-model", help="Model for the descriptions stage.")
]
FeaturesModelOption = Annotated[
    str | None, typer.Option("--features-model", help="Model for the features stage.")
]
InspirationOption = Annotated[str | None, typer.Option("--inspiration", help="Inspirations file name.")]
LlmConcurrencyOption = Annotated[
    int | None, typer.Option("--llm-concurrency", help="Model calls in flight at once, across the run.")
]
MappingModelOption = Annotated[
    str | None, typer.Option("--mapping-model", help="Model for the mapping stage.")
]
ProgressOption = Annotated[
    bool,
    typer.Option("--progress/--no-progress", help="Progress bar on stderr (only when it is a terminal)."),
]
RunBudgetUsdOption = Annotated[
    float | None, typer.Option("--run-budget-usd", help="Spending cap for this run, in USD.")
]
StrictOption = Annotated[
    bool | None,
    typer.Option("--strict/--lenient", help="Any unknown id, facet violation or gap fails that service."),
]
SummaryJsonOption = Annotated[
    Path | None, typer.Option("--summary-json", help="Also write the run summary as JSON to this file.")
]
TraceIdsOption = Annotated[
    bool, typer.Option("--trace-ids", help="Add request ids (and provider response ids) to model logs.")
]
