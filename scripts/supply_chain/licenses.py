#!/usr/bin/env python3
"""Check the licences of the runtime-only environment against ``config/licenses-allow.txt``.

pip-licenses (the locked one, from the ``supply-chain`` group) reads the cached runtime venv (locked runtime
dependencies + the project wheel, see ``_envs.py``); each distribution's licence string is normalised to SPDX
ids and checked against the allow-list:

- spellings of one licence are one id: "MIT License" -> MIT, "Apache Software License" / "Apache 2.0" ->
  Apache-2.0, "BSD License" / "BSD" -> BSD-3-Clause, "Mozilla Public License 2.0 (MPL 2.0)" -> MPL-2.0, ...;
- SPDX expressions are evaluated: ``A OR B`` needs one allowed side, ``A AND B`` needs both, ``A WITH E``
  is one licence (allowed only if listed as written);
- several trove classifiers (pip-licenses joins them with "; ") must all be allowed;
- a full licence text in the metadata is judged by its first line ("MIT License\\n\\nCopyright ...");
- "UNKNOWN" (no licence declared) fails unless the allow-list has a reviewed override for the package.

    uv run python scripts/supply_chain/licenses.py
    uv run python scripts/supply_chain/licenses.py --report recorded.json  # pip-licenses --format json

Exit codes: 0 all allowed, 1 some disallowed (listed on stderr), 2 usage error or a step failed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from _envs import DEFAULT_CACHE_DIR, ROOT, SupplyChainError, run, runtime_python, tools_python

DEFAULT_ALLOW_LIST = ROOT / "config" / "licenses-allow.txt"

# Lower-cased spelling -> SPDX id. Bare "BSD" and "Apache Software License" name no version; in Python
# metadata they are in practice BSD-3-Clause and Apache-2.0 (the most demanding variants packages use).
_ALIASES: dict[str, tuple[str, ...]] = {
    "MIT": (
        "mit license",
        "mit licence",
        "the mit license",
        "the mit license (mit)",
        "mit license (mit)",
        "expat",
    ),
    "MIT-0": ("mit no attribution", "mit no attribution license", "mit no attribution license (mit-0)"),
    "Apache-2.0": (
        "apache",
        "apache 2",
        "apache 2.0",
        "apache-2",
        "apache2",
        "apache license",
        "apache license 2.0",
        "apache license, version 2.0",
        "apache license version 2.0",
        "apache software license",
        "apache software license 2.0",
        "apache software license (apache-2.0)",
        "apache license (2.0)",
        "asl 2.0",
        "apache software license version 2.0",
        "apache-2.0 license",
    ),
    "BSD-3-Clause": (
        "bsd",
        "bsd license",
        "bsd licence",
        "new bsd",
        "new bsd license",
        "modified bsd",
        "modified bsd license",
        "revised bsd",
        "3-clause bsd",
        "3-clause bsd license",
        "bsd 3-clause",
        "bsd 3-clause license",
        "bsd-3",
        "bsd-3-clause license",
    ),
    "BSD-2-Clause": ("bsd 2-clause", "bsd 2-clause license", "2-clause bsd", "simplified bsd", "freebsd"),
    "0BSD": ("bsd zero clause license", "zero-clause bsd"),
    "MPL-2.0": (
        "mpl 2.0",
        "mpl2",
        "mozilla public license 2.0",
        "mozilla public license 2.0 (mpl 2.0)",
        "mozilla public license, version 2.0",
    ),
    "PSF-2.0": (
        "psf",
        "psfl",
        "psf license",
        "psf-2",
        "python software foundation",
        "python software foundation license",
        "python software foundation license (psf-2.0)",
    ),
    "ISC": ("isc license", "isc license (iscl)", "iscl"),
    "Unlicense": ("the unlicense", "the unlicense (unlicense)", "unlicense license"),
    "LGPL-3.0-only": ("gnu lesser general public license v3 (lgplv3)", "lgplv3"),
    "LGPL-3.0-or-later": ("gnu lesser general public license v3 or later (lgplv3+)", "lgplv3+"),
    "LGPL-2.1-or-later": ("gnu lesser general public license v2 or later (lgplv2+)", "lgplv2+"),
    "GPL-2.0-only": ("gnu general public license v2 (gplv2)", "gplv2"),
    "GPL-2.0-or-later": ("gnu general public license v2 or later (gplv2+)", "gplv2+"),
    "GPL-3.0-only": ("gnu general public license v3 (gplv3)", "gplv3"),
    "GPL-3.0-or-later": ("gnu general public license v3 or later (gplv3+)", "gplv3+"),
    "AGPL-3.0-only": ("gnu affero general public license v3", "agplv3"),
}
_CANONICAL = {
    spelling: spdx for spdx, spellings in _ALIASES.items() for spelling in (spdx.lower(), *spellings)
}
_UNDECLARED = {"", "unknown", "none", "n/a"}
_OVERRIDE = re.compile(r"(?P<package>[A-Za-z0-9][A-Za-z0-9._-]*(?:==\S+)?)\s*=\s*(?P<expression>\S.*)")


def canonical(name: str) -> str:
    """The SPDX id for one licence spelling; unknown spellings come back unchanged (trimmed)."""
    cleaned = " ".join(name.split())
    return _CANONICAL.get(cleaned.lower(), cleaned)


@dataclass(frozen=True)
class Verdict:
    """One distribution's licence, normalised, and the parts of it that the allow-list does not cover."""

    name: str
    version: str
    declared: str
    normalised: str
    disallowed: tuple[str, ...]
    override: bool = False


class _Expression:
    """Recursive-descent evaluation of an SPDX expression against an allow-list (case-insensitive ids)."""

    def __init__(self, text: str, allowed: set[str]) -> None:
        self.tokens = [token for token in re.split(r"(\(|\)|\s+)", text) if token.strip()]
        self.position = 0
        self.allowed = allowed

    def evaluate(self) -> tuple[str, tuple[str, ...]]:
        rendered, missing = self._or()
        if self.position != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.position]!r}")
        return rendered, missing

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _or(self) -> tuple[str, tuple[str, ...]]:
        parts = [self._and()]
        while self._peek() == "OR":
            self.position += 1
            parts.append(self._and())
        rendered = " OR ".join(part for part, _ in parts)
        # One allowed alternative is enough; otherwise every alternative is reported.
        if any(not missing for _, missing in parts):
            return rendered, ()
        return rendered, tuple(item for _, missing in parts for item in missing)

    def _and(self) -> tuple[str, tuple[str, ...]]:
        parts = [self._with()]
        while self._peek() == "AND":
            self.position += 1
            parts.append(self._with())
        return _all(parts)

    def _with(self) -> tuple[str, tuple[str, ...]]:
        if self._peek() == "(":
            self.position += 1
            rendered, missing = self._or()
            if self._peek() != ")":
                raise ValueError("unbalanced parentheses")
            self.position += 1
            return f"({rendered})", missing
        words: list[str] = []
        while (token := self._peek()) is not None and token not in {"AND", "OR", "(", ")"}:
            words.append(token)
            self.position += 1
        if not words:
            raise ValueError("missing licence")
        # "X WITH exception" is one licence: allowed only if listed as such.
        return _single(
            " WITH ".join(canonical(part) for part in " ".join(words).split(" WITH ", 1)), self.allowed
        )


def _single(name: str, allowed: set[str]) -> tuple[str, tuple[str, ...]]:
    licence = canonical(name)
    return licence, () if licence.lower() in allowed else (licence,)


def _all(parts: list[tuple[str, tuple[str, ...]]]) -> tuple[str, tuple[str, ...]]:
    return " AND ".join(part for part, _ in parts), tuple(item for _, missing in parts for item in missing)


def evaluate(declared: str, allowed: set[str]) -> tuple[str, tuple[str, ...]]:
    """Normalise ``declared`` and return it with the licences in it that ``allowed`` does not cover."""
    lines = [line.strip() for line in declared.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""  # a full licence text is judged by its title line
    if text.lower() in _UNDECLARED:
        return "UNKNOWN", ("no licence declared",)
    if ";" in text:  # several classifiers: all of them apply
        return _all([evaluate(part, allowed) for part in text.split(";") if part.strip()])
    if text.lower() in _CANONICAL or not set(text.split()) & {"AND", "OR", "WITH"}:
        return _single(text, allowed)
    try:
        return _Expression(text, allowed).evaluate()
    except ValueError:  # not a well-formed expression: judge the string as one licence name
        return _single(text, allowed)


@dataclass(frozen=True)
class AllowList:
    """Allowed SPDX ids (lower-cased) and reviewed per-package overrides (``name`` or ``name==version``)."""

    licences: set[str]
    overrides: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> AllowList:
        licences: set[str] = set()
        overrides: dict[str, str] = {}
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "=" not in line:
                licences.add(canonical(line).lower())
            elif match := _OVERRIDE.fullmatch(line):
                overrides[_package_key(match["package"])] = match["expression"]
            else:
                raise ValueError(f"{path}:{number}: expected a licence or `package[==version] = expression`")
        if not licences:
            raise ValueError(f"{path}: no licences listed")
        return cls(licences, overrides)

    def check(self, name: str, version: str, declared: str) -> Verdict:
        key = _package_key(name)
        override = self.overrides.get(f"{key}=={version}") or self.overrides.get(key)
        normalised, missing = evaluate(override or declared, self.licences)
        return Verdict(name, version, declared, normalised, missing, override=override is not None)


def _package_key(name: str) -> str:
    package, _, version = name.partition("==")
    key = re.sub(r"[-_.]+", "-", package.strip()).lower()
    return f"{key}=={version.strip()}" if version else key


def pip_licenses_report(cache_dir: Path) -> list[dict[str, str]]:
    """pip-licenses' JSON report of the runtime environment (all distributions, system ones included)."""
    runtime, tools = runtime_python(cache_dir), tools_python(cache_dir)
    output = run(
        [str(tools), "-m", "piplicenses", "--python", str(runtime), "--format", "json", "--with-system"]
    )
    report: list[dict[str, str]] = json.loads(output.stdout)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check runtime licences against the allow-list.")
    parser.add_argument("--allow-list", type=Path, default=DEFAULT_ALLOW_LIST)
    parser.add_argument(
        "--report", type=Path, help="check this pip-licenses JSON report instead of the runtime venv"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="where the venvs are cached"
    )
    args = parser.parse_args(argv)
    try:
        allow = AllowList.load(args.allow_list)
        if args.report:
            report: list[dict[str, str]] = json.loads(args.report.read_text(encoding="utf-8"))
        else:
            report = pip_licenses_report(args.cache_dir)
        verdicts = [allow.check(row["Name"], row["Version"], row["License"]) for row in report]
    except (OSError, ValueError, KeyError, TypeError, SupplyChainError) as exc:
        print(f"licenses: {exc}", file=sys.stderr)
        return 2
    bad = [verdict for verdict in verdicts if verdict.disallowed]
    if bad:
        print(
            f"licenses: {len(bad)} of {len(verdicts)} distributions have a licence not in {args.allow_list}:",
            file=sys.stderr,
        )
        for verdict in bad:
            declared = (verdict.declared.strip().splitlines() or ["UNKNOWN"])[0]
            print(
                f"  {verdict.name}=={verdict.version}: declared {declared!r} -> {verdict.normalised}"
                f" (not allowed: {', '.join(verdict.disallowed)})",
                file=sys.stderr,
            )
        return 1
    counts = Counter(verdict.normalised for verdict in verdicts).most_common()
    overridden = sum(verdict.override for verdict in verdicts)
    summary = ", ".join(f"{licence} {count}" for licence, count in counts)
    print(
        f"licenses: all {len(verdicts)} distributions allowed ({overridden} by reviewed override): {summary}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
