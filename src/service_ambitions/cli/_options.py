"""Options shared by the commands that run the pipeline (``run``, ``map``, ``reverse``), defined once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from service_ambitions.errors import UsageError

if TYPE_CHECKING:
    from service_ambitions.domain.shard import Shard

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
    "ShardOption",
    "StrictOption",
    "SummaryJsonOption",
    "TraceIdsOption",
    "parse_shard",
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
ShardOption = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="K/N",
        help="Process only shard K of N (1 <= K <= N): the services whose service_id hashes to K; "
        "combine the shard outputs with `merge`.",
    ),
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


def parse_shard(value: str | None) -> Shard | None:
    """``--shard 2/4`` → ``Shard(index=2, count=4)``; None when the flag is not given.

    Raises:
        UsageError: Not K/N with 1 <= K <= N.
    """
    if value is None:
        return None
    from service_ambitions.domain.shard import Shard  # noqa: PLC0415  (a pydantic model: keeps --help fast)

    try:
        return Shard.parse(value)
    except ValueError as exc:
        raise UsageError(f"--shard {exc}") from None
