#!/usr/bin/env python3
"""Crash soak: SIGKILL a real run at random moments, resume each time, then check nothing was lost.

    uv run python scripts/crash_soak.py --iterations 200 --services 40

Each iteration starts ``service-ambitions run --resume`` in a subprocess (offline model with a
small simulated latency) and kills it with SIGKILL after a random delay. A last run completes the
job. The final output must hold every input service exactly once: 0 lost, 0 duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "services.jsonl"


@dataclass
class SoakResult:
    """What a soak found."""

    iterations: int
    services: int
    kills: int = 0
    finished_early: int = 0
    torn_repairs: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    final_exit: int = -1
    seconds: float = 0.0


def write_services(path: Path, count: int) -> list[str]:
    """Write ``count`` services derived from the samples; return their ids in order."""
    base = [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = []
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            record = dict(base[index % len(base)])
            record["service_id"] = f"SOAK-{index:04d}"
            record.pop("parent_id", None)
            ids.append(record["service_id"])
            handle.write(json.dumps(record) + "\n")
    return ids


def _command(work: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service_ambitions",
        "run",
        "--input-file",
        str(work / "services.jsonl"),
        "--output-file",
        str(work / "evolutions.jsonl"),
        "--cache-dir",
        str(work / "cache"),
        "--concurrency",
        "4",
        "--resume",
        "-q",
    ]


def soak(
    work: Path, *, iterations: int, services: int, seed: int, max_delay: float = 3.0, latency_ms: int = 5
) -> SoakResult:
    """Run the soak in ``work`` and report what the final output holds."""
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    expected = write_services(work / "services.jsonl", services)
    env = {**os.environ, "SA_OFFLINE__LATENCY_MS": str(latency_ms), "SA_MODEL": "offline"}
    rng = random.Random(seed)
    result = SoakResult(iterations=iterations, services=services)
    # A killed fresh run leaves evolutions.jsonl.partial, which the next --resume continues.
    broken = [work / "evolutions.jsonl.broken", work / "evolutions.jsonl.partial.broken"]
    for _ in range(iterations):
        before = sum(path.stat().st_size for path in broken if path.exists())
        process = subprocess.Popen(
            _command(work), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            process.wait(timeout=rng.uniform(0.05, max_delay))
            result.finished_early += 1
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            result.kills += 1
        after = sum(path.stat().st_size for path in broken if path.exists())
        result.torn_repairs += int(after > before)
    final = subprocess.run(_command(work), env=env, capture_output=True, text=True, check=False)
    result.final_exit = final.returncode
    lines = (work / "evolutions.jsonl").read_text(encoding="utf-8").splitlines()
    seen = [json.loads(line)["service"]["service_id"] for line in lines[1:]]
    result.lost = sorted(set(expected) - set(seen))
    result.duplicated = sorted({service_id for service_id in seen if seen.count(service_id) > 1})
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--services", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary directory")
    args = parser.parse_args()
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="sa-soak-") as tmp:
        result = soak(
            args.workdir or Path(tmp), iterations=args.iterations, services=args.services, seed=args.seed
        )
    print(json.dumps(result.__dict__, indent=2))
    ok = result.final_exit == 0 and not result.lost and not result.duplicated
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
