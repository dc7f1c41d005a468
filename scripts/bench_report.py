"""Benchmark ``report`` and ``export``: wall time and peak RSS for portfolios of 500 and 5,000 services.

The inputs are made from a sample run (``make sample``'s output, or one made here with the offline model):
its records are copied round-robin with new service ids and names until there are N. Each measurement runs
in its own process, which reports its own peak RSS (``resource.getrusage``), so a bounded-memory design shows
as a peak that does not grow with N.

    uv run python scripts/bench_report.py                       # 500 and 5000 services
    uv run python scripts/bench_report.py --sizes 500 --keep out/bench-report
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service_ambitions.report import build_site, export_tables

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "services.jsonl"


def sample_run(directory: Path) -> Path:
    """An evolutions file of the bundled samples, from the offline model."""
    output = directory / "sample.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "service_ambitions",
            "run",
            "--model",
            "offline",
            "--input-file",
            str(SAMPLES),
            "--output-file",
            str(output),
            "--cache-mode",
            "off",
            "--no-progress",
            "-q",
        ],
        check=True,
    )
    return output


def scaled(sample: Path, count: int, target: Path) -> Path:
    """``count`` records copied from ``sample`` with new ids (``<id>-00042``) and names."""
    header, *records = sample.read_text(encoding="utf-8").splitlines()
    with target.open("w", encoding="utf-8") as handle:
        handle.write(header + "\n")
        for index in range(count):
            record = json.loads(records[index % len(records)])
            record["service"]["service_id"] = f"{record['service']['service_id']}-{index:05d}"
            record["service"]["name"] = f"{record['service']['name']} {index}"
            handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    return target


def worker(task: str, source: Path, target: Path) -> dict[str, Any]:
    """Run one task in this process; report its time and this process's peak RSS."""
    started = time.perf_counter()
    if task == "report":
        build_site(source, target)
    else:
        export_tables(source, target, fmt="csv" if task == "export-csv" else "xlsx")
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kib / 1024, 1)}


def measure(task: str, source: Path, target: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", task, str(source), str(target)],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def size_mb(path: Path) -> float:
    total = path.stat().st_size if path.is_file() else sum(item.stat().st_size for item in path.rglob("*"))
    return round(total / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--tasks", nargs="+", default=["report", "export-csv", "export-xlsx"])
    parser.add_argument("--sample", type=Path, help="An evolutions file to copy records from.")
    parser.add_argument("--keep", type=Path, help="Keep inputs and outputs in this directory.")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, source, target = args.worker
        print(json.dumps(worker(task, Path(source), Path(target))))
        return

    directory = args.keep or Path(tempfile.mkdtemp(prefix="sa-bench-report-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        sample = args.sample or sample_run(directory)
        rows = []
        for count in args.sizes:
            source = scaled(sample, count, directory / f"evolutions-{count}.jsonl")
            for task in args.tasks:
                suffix = {"report": "site", "export-csv": "tables", "export-xlsx": "tables.xlsx"}[task]
                target = directory / f"{count}-{suffix}"
                result = measure(task, source, target)
                row = {
                    "services": count,
                    "task": task,
                    "input_mb": size_mb(source),
                    **result,
                    "output_mb": size_mb(target),
                }
                if task == "report":
                    row["index_kb"] = round((target / "index.html").stat().st_size / 1e3)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        print("| services | task | input MB | time s | peak RSS MB | output MB | index KB |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row['services']} | {row['task']} | {row['input_mb']} | {row['seconds']} | "
                f"{row['peak_rss_mb']} | {row['output_mb']} | {row.get('index_kb', '')} |"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
