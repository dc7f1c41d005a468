#!/usr/bin/env python3
"""Benchmark the pipeline on generated services with the offline model.

Each case runs in a child process (so peak RSS is per case) and reports services/s, model calls/s,
our own CPU milliseconds per model call (process CPU minus the time the offline model spends writing
answers) and peak RSS. Results are printed as a table and, with --json, as JSON.

    uv run python scripts/bench.py                       # 100 and 1,000 services, 0 ms latency
    uv run python scripts/bench.py --sizes 200 --latency-ms 50 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "services.jsonl"


def generate(path: Path, count: int, seed: int = 7) -> None:
    """Write ``count`` services derived from the samples, with fresh ids and shuffled jobs."""
    base = [json.loads(line) for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            record = json.loads(json.dumps(base[index % len(base)]))
            record["service_id"] = f"BENCH-{index:06d}"
            record["name"] = f"{record['name']} {index}"
            rng.shuffle(record["jobs_to_be_done"])
            record.pop("parent_id", None)
            handle.write(json.dumps(record) + "\n")


def child(
    count: int, latency_ms: float, concurrency: int, cache_mode: str, work: Path | None = None
) -> dict[str, Any]:
    """Run one case in this process and measure it (``work`` keeps the cache between calls)."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="sa-bench-") as tmp:
            return child(count, latency_ms, concurrency, cache_mode, Path(tmp))
    from service_ambitions.context import build_context  # noqa: PLC0415
    from service_ambitions.engine.engine import ProcessingEngine  # noqa: PLC0415
    from service_ambitions.llm.offline import OfflineModel  # noqa: PLC0415
    from service_ambitions.settings import load_settings  # noqa: PLC0415

    if True:
        if not (work / "services.jsonl").exists():
            generate(work / "services.jsonl", count)
        settings = load_settings(
            None,
            {
                "model": "offline",
                "cache_mode": cache_mode,
                "cache_dir": work / "cache",
                "concurrency": concurrency,
                "llm_concurrency": max(16, concurrency * 4),
                "offline": {"latency_ms": latency_ms},
            },
        )
        model = OfflineModel(latency_ms=latency_ms)
        context = build_context(settings, models={"offline": model})
        cpu_before = time.process_time()
        wall_before = time.perf_counter()
        report = asyncio.run(
            ProcessingEngine(context).run(work / "services.jsonl", work / "evolutions.jsonl")
        )
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        calls = context.gateway.stats.calls
        context.close()
    return {
        "services": count,
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "ok": report.services_ok,
        "calls": calls,
        "wall_s": round(wall, 3),
        "services_per_s": round(count / wall, 2),
        "calls_per_s": round(calls / wall, 1),
        "cpu_ms_per_call_ours": round((cpu - model.cpu_seconds) * 1000 / max(calls, 1), 3),
        "cpu_ms_per_call_model": round(model.cpu_seconds * 1000 / max(calls, 1), 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="numbers of services")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulated model latency")
    parser.add_argument("--concurrency", type=int, default=8, help="services in flight")
    parser.add_argument("--cache-mode", default="off", choices=["off", "read"], help="response cache mode")
    parser.add_argument("--json", action="store_true", help="print JSON results")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="run each size twice on one cache: cold, then warm (cache-mode read)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child and args.warm:
        with tempfile.TemporaryDirectory(prefix="sa-bench-") as tmp:
            cold = child(args.sizes[0], args.latency_ms, args.concurrency, "read", Path(tmp))
            warm = child(args.sizes[0], args.latency_ms, args.concurrency, "read", Path(tmp))
        cold["case"], warm["case"] = "cold", "warm"
        warm["speedup"] = round(cold["wall_s"] / warm["wall_s"], 1)
        print(json.dumps([cold, warm]))
        return 0
    if args.child:
        print(json.dumps([child(args.sizes[0], args.latency_ms, args.concurrency, args.cache_mode)]))
        return 0
    results = []
    for size in args.sizes:
        completed = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--sizes",
                str(size),
                "--latency-ms",
                str(args.latency_ms),
                "--concurrency",
                str(args.concurrency),
                "--cache-mode",
                args.cache_mode,
                *(["--warm"] if args.warm else []),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results.extend(json.loads(completed.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    columns = list(dict.fromkeys(column for row in results for column in row))
    print("  ".join(f"{column:>{max(len(column), 8)}}" for column in columns))
    for row in results:
        print("  ".join(f"{row.get(column, '')!s:>{max(len(column), 8)}}" for column in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
