"""The ``inject_failures`` spec: ``p=0.05[,kinds=429,500,timeout,malformed][,seed=N]``.

Standard library only, below both of its users: ``settings`` parses it to reject a bad spec at start-up
(naming the key and its source), ``llm/chaos.py`` parses it again to inject the failures. Keeping the parser
here lets ``llm`` depend on ``settings`` without ``settings`` ever importing ``llm``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KINDS", "FailureSpec", "parse_failure_spec"]

KINDS = ("429", "500", "timeout", "malformed")


@dataclass(frozen=True)
class FailureSpec:
    """Probability, kinds and seed of injected failures."""

    probability: float
    kinds: tuple[str, ...] = KINDS
    seed: int = 0


def parse_failure_spec(text: str) -> FailureSpec:
    """Parse ``p=0.05[,kinds=429,500,timeout,malformed][,seed=N]``.

    Raises:
        ValueError: Naming the part that is wrong.
    """
    probability: float | None = None
    kinds: list[str] = []
    seed = 0
    current = ""
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        if sep:
            current = key.strip()
            value = value.strip()
        else:
            value = key.strip()
            if current != "kinds":
                raise ValueError(f"{part!r}: expected key=value (p=, kinds=, seed=)")
        if current == "p":
            probability = float(value)
            if not 0 <= probability <= 1:
                raise ValueError(f"p={value}: a probability is between 0 and 1")
        elif current == "kinds":
            if value not in KINDS:
                raise ValueError(f"kind {value!r} is not one of {', '.join(KINDS)}")
            kinds.append(value)
        elif current == "seed":
            seed = int(value)
        else:
            raise ValueError(f"unknown key {current!r} (expected p, kinds, seed)")
    if probability is None:
        raise ValueError("p= is required, e.g. p=0.05")
    return FailureSpec(probability=probability, kinds=tuple(kinds) or KINDS, seed=seed)
