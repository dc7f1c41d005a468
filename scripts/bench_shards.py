#!/usr/bin/env python3
"""Benchmark shards: ``run --shard K/N`` for N = 1, 2, 4 under one shared rate limit, and ``merge``.

**The shared limit.** Shards of a real batch run as separate processes (CI jobs) on one API key, so
the limit that matters is the provider's, counted over every process on the key. This benchmark
reproduces exactly that: one :class:`~service_ambitions.testing.openai_server.FakeOpenAIServer` per N
(threads in this process) enforces an RPM limit over all requests it receives and sends OpenAI's
``x-ratelimit-*`` headers, and the N shards run at the same time as real CLI processes
(``--model openai-chat:gpt-5-mini``, ``SA_BASE_URL``, ``--cache-mode off``, default settings, no
configured limit), each learning the shared remaining budget from the headers. The offline model with a
configured latency was not used: each process would sleep on its own, so N shards would get N times
the throughput, which is not what a provider gives N processes on one key (and a configured
``models_rate_limits`` is per process, so it would not be shared either). The server answers with the
offline model's answers, so the records are the offline model's.

Two regimes (``--regimes``): ``limited`` (the RPM limit, default 2400/min, i.e. 200 services x 21
calls = 4200 calls need about two windows) and ``unlimited`` (latency only, no limit or headers),
where shards can only win what the machine's CPUs give. For each N: wall time from the first start to
the last exit, its ratio to N = 1, requests and 429s the server saw, the most requests in any 60 s
(refused ones included), services left without a record (quarantined after their transport retries:
``--attempts`` sets ``transport_retries.attempts``), peak RSS of the largest shard, the ``merge`` time,
and whether the merged records are byte-identical to the N = 1 (unsharded) run's (``present``: those
that are there are, but services are missing).

**Merge.** ``--merge-records`` (default 10,000) records are synthesised from one real offline record
(new ids, so they spread over 4 shards), with headers of a real shard run; ``merge`` then runs as a
child process and its wall time and peak RSS are reported, also for a quarter of the records and for
none: the RSS ratio shows that memory does not grow with the records (only the input-order index does,
a few bytes per service), against shard files of hundreds of MB. Peak RSS is the child's own ``VmHWM``,
written by a small wrapper at exit: ``wait4``'s ``ru_maxrss`` also counts the pages the child shared
with this (large) process before ``exec``.

Exit status 1 when a merged record differs from the unsharded run's, or a run or merge breaks (exit
codes other than 0 and 1); services left without a record are reported, not a failure.

    uv run python scripts/bench_shards.py                      # about 7 to 9 minutes on 2 CPUs
    uv run python scripts/bench_shards.py --regimes unlimited  # no limit: about 1 minute
    uv run python scripts/bench_shards.py --services 60 --rpm 600 --merge-records 2000   # a quick look
    uv run python scripts/bench_shards.py --json               # the JSON report only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "services.jsonl"
MODEL = "openai-chat:gpt-5-mini"
MINUTE = 60.0
COMMAND = [sys.executable, "-m", "service_ambitions"]
# Runs the CLI and writes its own peak RSS (VmHWM, KiB) to argv[1] at exit. Taken inside the child: a
# child's ru_maxrss (wait4) also counts the parent's pages it shared before exec, here the server's.
_MEASURED = """
import atexit, resource, runpy, sys
out = sys.argv[1]
def peak():
    try:
        with open("/proc/self/status") as status:
            kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kib = str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    with open(out, "w") as handle:
        handle.write(kib)
atexit.register(peak)
sys.argv = ["service-ambitions", *sys.argv[2:]]
runpy.run_module("service_ambitions", run_name="__main__", alter_sys=True)
"""
_DROPPED = ("SA_", "OPENAI_", "ANTHROPIC_", "GOOGLE_", "GEMINI_", "GROQ_", "MISTRAL_", "OPENROUTER_")


def environment(work: Path, **extra: str) -> dict[str, str]:
    """The children's environment: none of ours or the providers' variables, a private cache."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(_DROPPED)}
    return env | {"XDG_CACHE_HOME": str(work / "xdg-cache"), "SA_CACHE_MODE": "off"} | extra


def write_services(path: Path, count: int, prefix: str = "BENCH") -> None:
    """``count`` copies of the first sample service with distinct ids and names."""
    base = json.loads(SAMPLES.read_text(encoding="utf-8").splitlines()[0])
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            record = dict(base, service_id=f"{prefix}-{index:06d}", name=f"{base['name']} ({index})")
            handle.write(json.dumps(record) + "\n")


def measured(rss_file: Path, *args: str) -> list[str]:
    """The command running ``service-ambitions ARGS`` that leaves its peak RSS in ``rss_file``."""
    return [sys.executable, "-c", _MEASURED, str(rss_file), *args]


def peak_mb(rss_file: Path) -> float:
    return round(int(rss_file.read_text()) / 1024, 1) if rss_file.exists() else float("nan")


def records_of(path: Path) -> bytes:
    """Every line after the header."""
    with path.open("rb") as handle:
        handle.readline()
        return handle.read()


def same_records(merged: bytes, expected: bytes) -> bool:
    """``merged`` is ``expected`` without the lines of the services it lacks (byte for byte, in order)."""
    present = {orjson.loads(line)["service"]["service_id"] for line in merged.splitlines()}
    kept = [
        line
        for line in expected.splitlines(keepends=True)
        if orjson.loads(line)["service"]["service_id"] in present
    ]
    return merged == b"".join(kept)


def max_in_window(times: list[float]) -> int:
    """Most requests in any sliding 60 s window."""
    times = sorted(times)
    best = first = 0
    for last, end in enumerate(times):
        while times[first] + MINUTE <= end:
            first += 1
        best = max(best, last - first + 1)
    return best


def run_shards(work: Path, regime: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    """N shards at once against one server (N = 1: a plain unsharded run); then their merge."""
    from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer  # noqa: PLC0415

    behaviour = (
        Behaviour(latency=args.latency, rpm=args.rpm)
        if regime == "limited"
        else Behaviour(latency=args.latency, rate_limit_headers=False)
    )
    folder = work / f"{regime}-{count}"
    folder.mkdir()
    with FakeOpenAIServer(behaviour) as server:
        env = environment(work, SA_BASE_URL=server.base_url, OPENAI_API_KEY="sk-bench")
        if args.attempts is not None:
            env["SA_TRANSPORT_RETRIES__ATTEMPTS"] = str(args.attempts)
        processes = []
        started = time.monotonic()
        for index in range(1, count + 1):
            shard = [] if count == 1 else ["--shard", f"{index}/{count}"]
            output = folder / ("all.jsonl" if count == 1 else f"shard-{index}.jsonl")
            with (folder / f"shard-{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            *measured(folder / f"shard-{index}.rss", "run"),
                            "--model",
                            MODEL,
                            "--input-file",
                            str(work / "services.jsonl"),
                            "--output-file",
                            str(output),
                            "--no-progress",
                            "-q",
                            *shard,
                        ],
                        env=env,
                        stdout=subprocess.DEVNULL,
                        stderr=log,
                    )
                )
        finished = [process.wait() for process in processes]
        wall = time.monotonic() - started
        times = [request.time for request in server.chat_requests()]
        refused = server.counters.rate_limited
    for index, code in enumerate(finished, start=1):
        if code != 0:
            log_text = (folder / f"shard-{index}.log").read_text(errors="replace")[-2000:]
            sys.stderr.write(f"{regime} N={count} shard {index}: exit {code}\n{log_text}\n")
    outputs = (
        [folder / "all.jsonl"] if count == 1 else [folder / f"shard-{k}.jsonl" for k in range(1, count + 1)]
    )
    written = sum(records_of(path).count(b"\n") for path in outputs if path.exists())
    row: dict[str, Any] = {
        "regime": regime,
        "shards": count,
        "exit_codes": finished,
        "no_record": args.services - written,
        "wall_s": round(wall, 2),
        "requests": len(times),
        "rate_limited_429": refused,
        "max_requests_in_60s": max_in_window(times),
        "peak_rss_mb": max(peak_mb(folder / f"shard-{index}.rss") for index in range(1, count + 1)),
    }
    if count > 1:
        merge_started = time.monotonic()
        merged = subprocess.run(
            [
                *COMMAND,
                "merge",
                *(str(folder / f"shard-{k}.jsonl") for k in range(1, count + 1)),
                "--input-file",
                str(work / "services.jsonl"),
                "--output-file",
                str(folder / "all.jsonl"),
                "-q",
            ],
            env=environment(work),
            capture_output=True,
            text=True,
            check=False,
        )
        row["merge_s"] = round(time.monotonic() - merge_started, 2)
        if merged.returncode != 0:
            sys.stderr.write(f"{regime} N={count} merge: exit {merged.returncode}\n{merged.stderr[-2000:]}\n")
    return row


def shard_template(work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real shard header and record (offline model), for the synthesised merge input."""
    folder = work / "template"
    folder.mkdir()
    write_services(folder / "one.jsonl", 1, "TEMPLATE")
    subprocess.run(
        [
            *COMMAND,
            "run",
            "--model",
            "offline",
            "--input-file",
            str(folder / "one.jsonl"),
            "--output-file",
            str(folder / "one.out.jsonl"),
            "--shard",
            "1/1",
            "-q",
            "--no-progress",
        ],
        env=environment(work),
        check=True,
    )
    header_line, record_line = (folder / "one.out.jsonl").read_bytes().splitlines()[:2]
    return orjson.loads(header_line), orjson.loads(record_line)


def bench_merge(work: Path, records: int, template: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    """Synthesise ``records`` records in 4 shards, then time ``merge`` and take its peak RSS."""
    from service_ambitions.domain.shard import shard_of  # noqa: PLC0415

    header, record = template
    folder = work / f"merge-{records}"
    folder.mkdir()
    source = folder / "services.jsonl"
    write_services(source, records, "M")
    header = dict(header, input_digest=hashlib.sha256(source.read_bytes()).hexdigest())
    count = 4
    handles = [(folder / f"shard-{k}.jsonl").open("wb") for k in range(1, count + 1)]
    try:
        for k, handle in enumerate(handles, start=1):
            handle.write(orjson.dumps(dict(header, shard={"index": k, "count": count})) + b"\n")
        with source.open("rb") as services:
            for line in services:
                service = orjson.loads(line)
                line_out = orjson.dumps(dict(record, service=service)) + b"\n"
                handles[shard_of(service["service_id"], count) - 1].write(line_out)
    finally:
        for handle in handles:
            handle.close()
    size = sum((folder / f"shard-{k}.jsonl").stat().st_size for k in range(1, count + 1))
    started = time.monotonic()
    process = subprocess.Popen(
        [
            *measured(folder / "merge.rss", "merge"),
            *(str(folder / f"shard-{k}.jsonl") for k in range(1, count + 1)),
            "--input-file",
            str(source),
            "--output-file",
            str(folder / "merged.jsonl"),
            "-q",
        ],
        env=environment(work),
        stdout=subprocess.DEVNULL,
    )
    code = process.wait()
    wall = time.monotonic() - started
    written = None
    if code == 0:
        with (folder / "merged.jsonl").open("rb") as merged:
            written = sum(1 for _ in merged) - 1
    for path in folder.glob("*.jsonl"):  # hundreds of MB: do not keep them past the measurement
        path.unlink()
    return {
        "records": records,
        "exit_code": code,
        "records_written": written,
        "shard_files_mb": round(size / 1e6, 1),
        "merge_s": round(wall, 2),
        "peak_rss_mb": peak_mb(folder / "merge.rss"),
    }


def _row(row: dict[str, Any]) -> str:
    return (
        f"{row['regime']:<10} {row['shards']:>2} {row['wall_s']:>8.1f} {row['vs_1']:>7.2f} "
        f"{row['requests']:>9} {row['rate_limited_429']:>5} {row['max_requests_in_60s']:>8} "
        f"{row['no_record']:>9} {row['peak_rss_mb']:>7.1f} {row.get('merge_s', '-'):>8} "
        f"{'yes' if row['identical'] else 'present' if row['identical_present'] else 'NO':>9}"
    )


def _merge_row(item: dict[str, Any]) -> str:
    return (
        f"{item['records']:>9} {item['shard_files_mb']:>10.1f} {item['merge_s']:>8.2f} "
        f"{item['peak_rss_mb']:>12.1f} {item['records'] / item['merge_s'] if item['records'] else 0:>10.0f}"
    )


def table(rows: list[dict[str, Any]], merges: list[dict[str, Any]]) -> str:
    """The report as two small tables."""
    lines = []
    if rows:
        lines.append(
            f"{'regime':<10} {'N':>2} {'wall s':>8} {'vs N=1':>7} {'requests':>9} {'429s':>5} "
            f"{'max/60s':>8} {'no record':>9} {'RSS MB':>7} {'merge s':>8} {'identical':>9}"
        )
        lines.extend(_row(row) for row in rows)
    if merges:
        lines.append("")
        lines.append(
            f"{'merge of':>9} {'shards MB':>10} {'merge s':>8} {'peak RSS MB':>12} {'records/s':>10}"
        )
        lines.extend(_merge_row(item) for item in merges)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--regimes", nargs="+", choices=["limited", "unlimited"], default=["limited", "unlimited"]
    )
    parser.add_argument("--rpm", type=int, default=2400, help="the shared limit of the limited regime")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer")
    parser.add_argument(
        "--attempts",
        type=int,
        help="transport_retries.attempts of the runs (default: the setting's default, 4)",
    )
    parser.add_argument("--merge-records", type=int, default=10_000, help="0: skip the merge benchmark")
    parser.add_argument("--json", action="store_true", help="print the JSON report only")
    args = parser.parse_args()
    if 1 not in args.shards:
        args.shards = [1, *args.shards]  # the baseline every ratio and identity check is against
    report: dict[str, Any] = {
        "services": args.services,
        "rpm": args.rpm,
        "latency_s": args.latency,
        "attempts": args.attempts,
    }
    rows: list[dict[str, Any]] = []
    merges: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as name:
        work = Path(name)
        write_services(work / "services.jsonl", args.services)
        for regime in args.regimes:
            regime_rows = [run_shards(work, regime, count, args) for count in sorted(args.shards)]
            baseline = regime_rows[0]
            expected = records_of(work / f"{regime}-1" / "all.jsonl")
            for row in regime_rows:
                row["vs_1"] = round(row["wall_s"] / baseline["wall_s"], 3)
                merged = work / f"{regime}-{row['shards']}" / "all.jsonl"
                row["identical"] = merged.exists() and records_of(merged) == expected
                # when services are missing: are the records that are there the unsharded run's?
                row["identical_present"] = merged.exists() and same_records(records_of(merged), expected)
            rows.extend(regime_rows)
        if args.merge_records:
            template = shard_template(work)
            sizes = sorted({0, args.merge_records // 4, args.merge_records})  # 0: the command's own cost
            merges.extend(bench_merge(work, records, template) for records in sizes)
    report["runs"] = rows
    report["merges"] = merges
    if len(merges) == 3:
        report["merge_rss_ratio"] = round(merges[2]["peak_rss_mb"] / merges[1]["peak_rss_mb"], 3)
        report["merge_records_ratio"] = merges[2]["records"] / merges[1]["records"]
        report["merge_rss_above_empty_mb"] = round(merges[2]["peak_rss_mb"] - merges[0]["peak_rss_mb"], 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.services} services x 21 calls, {args.latency}s per answer, shared limit {args.rpm} rpm")
        print(table(rows, merges))
        if "merge_rss_ratio" in report:
            print(
                f"merge: {report['merge_records_ratio']:.0f}x the records -> "
                f"{report['merge_rss_ratio']:.2f}x the peak RSS; "
                f"{report['merge_rss_above_empty_mb']} MB above merging nothing"
            )
        print(json.dumps(report))
    # Services left without a record are a finding (shown in the table), not a failure of the benchmark;
    # a merged record that differs from the unsharded run's, or a run that broke otherwise, is.
    broken = [row for row in rows if not row["identical_present"] or set(row["exit_codes"]) - {0, 1}]
    broken += [item for item in merges if item["exit_code"] != 0]
    if any(row["no_record"] for row in rows) and not args.json:
        print(
            "note: some services have no record (429s after their transport retries): "
            "see the 'no record' column"
        )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
