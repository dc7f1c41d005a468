#!/usr/bin/env python3
"""Benchmark the real CLI against the local fake OpenAI server: latency bound, rate limits, two processes.

Three cases, side by side in one run, each with its own ``FakeOpenAIServer`` (threads in this
process, 300 ms per answer) and ``service-ambitions run --model openai-chat:gpt-5-mini`` as child
processes (``SA_BASE_URL``, ``OPENAI_API_KEY=sk-bench``, ``SA_CACHE_MODE=off``, default settings
otherwise, no configured rate limit):

* ``a_latency``: 10 services, a server without limits or rate-limit headers. Wall time, and the
  fraction of the critical-path bound reached: descriptions → features → mapping is 3 calls of the
  latency, everything else running in parallel (``bound_3_calls``; the pipeline runs every plateau's
  features and mapping as its own task, so that is its real chain).
* ``b_rpm``: the server enforces an RPM limit (default 120) and sends OpenAI's ``x-ratelimit-*``
  headers; the run must learn the limit from them. Sustained RPM ÷ limit (goal ≥ 0.9), 429s (goal
  ≤ 1 % of requests), most requests in any 60 s window (goal ≤ 1.02 x limit).
* ``c_two_processes``: two CLI runs (different inputs and outputs) at the same time against one
  server with that limit: the combined figures, and each process's share.

``a`` runs alone (it measures speed); ``b`` and ``c`` are bound by the limit, not the CPU, and run
at the same time on separate servers (``--serial`` runs them one after another).

    uv run python scripts/bench_gateway.py              # about 3 minutes of rate-limited traffic
    uv run python scripts/bench_gateway.py --quick      # about 1.5 minutes
    uv run python scripts/bench_gateway.py --json       # the JSON report only
    uv run python scripts/bench_gateway.py --cases a    # only the latency case (about 25 s)

Sustained RPM is the answered requests per whole minute from the first request the server received
(the 429s of those minutes, sampled from the server's counter, taken off): at most the limit when
every minute keeps to it. ``mean_rpm_over_span`` is the plain mean, which bursty traffic inflates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "services.jsonl"
MODEL = "openai-chat:gpt-5-mini"
MINUTE = 60.0
# Provider variables the isolated child environment drops (only ours are set).
_DROPPED = ("OPENAI_", "ANTHROPIC_", "GOOGLE_", "GEMINI_", "GROQ_", "MISTRAL_", "OPENROUTER_")


def write_services(path: Path, count: int, tag: str) -> None:
    """``count`` copies of the first sample service with distinct ids (and names, to tell runs apart)."""
    base = json.loads(SAMPLES.read_text(encoding="utf-8").splitlines()[0])
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            record = dict(base, service_id=f"BENCH-{tag}-{index:04d}", name=f"{base['name']} ({tag}-{index})")
            handle.write(json.dumps(record) + "\n")


def start_cli(
    work: Path, name: str, count: int, base_url: str, **settings: str
) -> tuple[subprocess.Popen[str], float]:
    """Start one ``run`` over ``count`` services in ``work``; returns the process and its start time.

    ``settings`` are extra ``SA_<NAME>`` environment settings (``rate_limits="off"``).
    """
    write_services(work / f"{name}.jsonl", count, name)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SA_") and not key.startswith(_DROPPED)
    }
    environment |= {"SA_BASE_URL": base_url, "OPENAI_API_KEY": "sk-bench", "SA_CACHE_MODE": "off"}
    environment |= {f"SA_{key.upper()}": value for key, value in settings.items()}
    command = [
        sys.executable, "-m", "service_ambitions", "run", "--model", MODEL,
        "--input-file", f"{name}.jsonl", "--output-file", f"{name}.out.jsonl",
        "--summary-json", f"{name}.summary.json", "--no-progress", "-q",
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=work, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    return process, started


def finish_cli(work: Path, name: str, process: subprocess.Popen[str], started: float) -> dict[str, Any]:
    """Wait for a run; its wall time, exit code and what its summary says."""
    _, stderr = process.communicate()
    wall = time.monotonic() - started
    summary_path = work / f"{name}.summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if process.returncode != 0:
        sys.stderr.write(f"{name}: exit {process.returncode}\n{stderr[-2000:]}\n")
    calls = summary.get("model_calls", {})
    return {
        "exit_code": process.returncode,
        "wall_s": round(wall, 2),
        "run_wall_s": summary.get("wall_seconds"),
        "services_ok": summary.get("services", {}).get("ok"),
        "model_requests": calls.get("requests"),
        "transport_retries": calls.get("transport_retries"),
        "by_stage": calls.get("by_stage", {}),
    }


def max_in_window(times: list[float]) -> int:
    """Most requests in any sliding 60 s window ``(t - 60, t]``."""
    times = sorted(times)
    best = first = 0
    for last, end in enumerate(times):
        while times[first] + MINUTE <= end:
            first += 1
        best = max(best, last - first + 1)
    return best


class RefusalLog:
    """Samples the server's 429 counter every 50 ms, to tell when the refusals happened."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RefusalLog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self.server.counters.rate_limited))
            if self._stop.wait(0.05):
                self.samples.append((time.monotonic(), self.server.counters.rate_limited))
                return

    def before(self, moment: float) -> int:
        """429s sent before ``moment`` (to within one sample)."""
        return max((count for at, count in self.samples if at <= moment), default=0)


def traffic(server: Any, rpm: int | None, refusals: RefusalLog | None = None) -> dict[str, Any]:
    """What the server saw: requests, 429s, sustained rate and the busiest minute.

    Sustained RPM is the answered requests per minute over the whole minutes from the first request
    (never above the limit when every minute keeps to it, unlike a mean over the span).
    """
    times = sorted(request.time for request in server.chat_requests())
    limited = server.counters.rate_limited
    answered = len(times) - limited
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    minutes = int(span // MINUTE)
    if minutes and refusals is not None:
        end = times[0] + minutes * MINUTE
        received = sum(1 for at in times if at < end)
        sustained = (received - refusals.before(end)) / minutes
    else:  # less than a minute of traffic: the mean over the span
        sustained = MINUTE * (answered - 1) / span if span > 0 else 0.0
    figures: dict[str, Any] = {
        "requests": len(times),
        "answered": answered,
        "rate_limited_429": limited,
        "fraction_429": round(limited / len(times), 4) if times else 0.0,
        "span_s": round(span, 1),
        "whole_minutes": minutes,
        "sustained_rpm": round(sustained, 1),
        "mean_rpm_over_span": round(MINUTE * (answered - 1) / span, 1) if span > 0 else 0.0,
        "max_requests_in_60s": max_in_window(times),
    }
    if rpm:
        figures |= {
            "rpm_limit": rpm,
            "sustained_over_limit": round(sustained / rpm, 3),
            "max_window_over_limit": round(figures["max_requests_in_60s"] / rpm, 3),
            "goals": {
                "sustained_over_limit >= 0.9": sustained / rpm >= 0.9,
                "fraction_429 <= 0.01": figures["fraction_429"] <= 0.01,
                "max_window <= 1.02 x limit": figures["max_requests_in_60s"] <= 1.02 * rpm,
            },
        }
    return figures


def case_latency(
    work: Path, services: int, latency: float, name: str = "a", **settings: str
) -> dict[str, Any]:
    """(a) Default settings against a server without limits: wall time against the critical path."""
    from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer  # noqa: PLC0415

    with FakeOpenAIServer(Behaviour(latency=latency)) as server:
        process, started = start_cli(work, name, services, server.base_url, **settings)
        run = finish_cli(work, name, process, started)
        seen = traffic(server, None)
    bound_3 = 3 * latency
    run_wall = run["run_wall_s"] or run["wall_s"]
    return {
        "services": services,
        "latency_s": latency,
        "settings": {f"SA_{key.upper()}": value for key, value in settings.items()},
        **run,
        "requests": seen["requests"],
        "bound_3_calls_s": round(bound_3, 2),
        "fraction_of_bound_3_calls": round(bound_3 / run_wall, 3),
    }


def case_rpm(work: Path, services: int, latency: float, rpm: int) -> dict[str, Any]:
    """(b) The server enforces ``rpm`` and sends rate-limit headers; nothing is configured."""
    from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer  # noqa: PLC0415

    with FakeOpenAIServer(Behaviour(latency=latency, rpm=rpm)) as server, RefusalLog(server) as refusals:
        process, started = start_cli(work, "b", services, server.base_url)
        run = finish_cli(work, "b", process, started)
    return {"services": services, "latency_s": latency, **run, **traffic(server, rpm, refusals)}


def case_two_processes(work: Path, services: int, latency: float, rpm: int) -> dict[str, Any]:
    """(c) Two runs at once sharing one server's limit: the combined figures and each one's share."""
    from service_ambitions.testing.openai_server import Behaviour, FakeOpenAIServer  # noqa: PLC0415

    with FakeOpenAIServer(Behaviour(latency=latency, rpm=rpm)) as server, RefusalLog(server) as refusals:
        first = start_cli(work, "c1", services, server.base_url)
        second = start_cli(work, "c2", services, server.base_url)
        runs = {"c1": finish_cli(work, "c1", *first), "c2": finish_cli(work, "c2", *second)}
    combined = traffic(server, rpm, refusals)
    for name, run in runs.items():
        run["requests_seen_by_server"] = sum(
            1 for request in server.chat_requests() if f"({name}-" in json.dumps(request.body)
        )
    return {"services_per_process": services, "latency_s": latency, "combined": combined, "processes": runs}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Run the three cases; ``a`` alone, then ``b`` and ``c`` (at the same time unless ``--serial``)."""
    quick = args.quick
    b_services = args.b_services or (8 if quick else 16)
    c_services = args.c_services or (4 if quick else 8)
    report: dict[str, Any] = {
        "command": " ".join(["scripts/bench_gateway.py", *sys.argv[1:]]),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="sa-bench-gateway-") as tmp:
        work = Path(tmp)
        if "a" in args.cases:
            report["a_latency"] = case_latency(work, args.a_services, args.latency)
            # The same without the probe window (rate_limits off): what waiting for the first answer costs.
            report["a_rate_limits_off"] = case_latency(
                work, args.a_services, args.latency, "a0", rate_limits="off"
            )
        jobs: dict[str, Callable[[], dict[str, Any]]] = {}
        if "b" in args.cases:
            jobs["b_rpm"] = lambda: case_rpm(work, b_services, args.latency, args.rpm)
        if "c" in args.cases:
            jobs["c_two_processes"] = lambda: case_two_processes(work, c_services, args.latency, args.rpm)
        if args.serial:
            for name, job in jobs.items():
                report[name] = job()
        else:
            results: dict[str, dict[str, Any]] = {}
            errors: list[BaseException] = []

            def worker(name: str, job: Callable[[], dict[str, Any]]) -> None:
                try:
                    results[name] = job()
                except BaseException as exc:  # reported below, in the main thread
                    errors.append(exc)

            threads = [threading.Thread(target=worker, args=item) for item in jobs.items()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            report |= {name: results[name] for name in jobs}
    return report


def _percent(value: float) -> str:
    return f"{value:.0%}"


def table(report: dict[str, Any]) -> str:
    """The figures people read, one line each."""
    rows: list[tuple[str, str, str, str]] = []
    if "a_latency" in report:
        a, off = report["a_latency"], report["a_rate_limits_off"]
        rows += [
            ("a", f"{a['services']} services, no limits", "wall (process / run)",
             f"{a['wall_s']} s / {a['run_wall_s']} s"),
            ("a", "", "bound 3 calls / reached",
             f"{a['bound_3_calls_s']} s / {_percent(a['fraction_of_bound_3_calls'])}"),
            ("a", "rate_limits: off (no probe)", "wall (process / run)",
             f"{off['wall_s']} s / {off['run_wall_s']} s"),
            ("a", "", "bound 3 calls / reached",
             f"{off['bound_3_calls_s']} s / {_percent(off['fraction_of_bound_3_calls'])}"),
        ]  # fmt: skip
    if "b_rpm" in report:
        b = report["b_rpm"]
        rows += [
            ("b", f"{b['services']} services, {b['rpm_limit']} RPM", "requests / span",
             f"{b['requests']} / {b['span_s']} s"),
            ("b", "", "sustained RPM / limit (>= 0.9)",
             f"{b['sustained_rpm']} / {b['sustained_over_limit']}"),
            ("b", "", "429s (<= 1 %)", f"{b['rate_limited_429']} ({b['fraction_429']:.1%})"),
            ("b", "", "max in 60 s (<= 1.02 x)",
             f"{b['max_requests_in_60s']} ({b['max_window_over_limit']} x)"),
        ]  # fmt: skip
    if "c_two_processes" in report:
        c = report["c_two_processes"]
        both, c1, c2 = c["combined"], c["processes"]["c1"], c["processes"]["c2"]
        rows += [
            ("c", f"2 x {c['services_per_process']} services, shared", "requests / span",
             f"{both['requests']} / {both['span_s']} s"),
            ("c", "", "sustained RPM / limit", f"{both['sustained_rpm']} / {both['sustained_over_limit']}"),
            ("c", "", "429s", f"{both['rate_limited_429']} ({both['fraction_429']:.1%})"),
            ("c", "", "max in 60 s", f"{both['max_requests_in_60s']} ({both['max_window_over_limit']} x)"),
            ("c", "", "wall c1 / c2", f"{c1['wall_s']} s / {c2['wall_s']} s"),
        ]  # fmt: skip
    if not rows:
        return ""
    widths = [max(len(row[index]) for row in rows) for index in range(4)]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer services in b and c (about 1.5 minutes)")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per answer (default 0.3)")
    parser.add_argument("--rpm", type=int, default=120, help="the server's limit in b and c (default 120)")
    parser.add_argument("--a-services", type=int, default=10)
    parser.add_argument("--b-services", type=int, default=None, help="default 16 (8 with --quick)")
    parser.add_argument(
        "--c-services", type=int, default=None, help="per process; default 8 (4 with --quick)"
    )
    parser.add_argument("--cases", nargs="+", choices=["a", "b", "c"], default=["a", "b", "c"])
    parser.add_argument("--serial", action="store_true", help="run b and c one after the other")
    parser.add_argument("--json", action="store_true", help="print the JSON report only")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    report = run_all(args)
    text = json.dumps(report, indent=2)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    if not args.json:
        print()
        print(table(report))
    failed = [run for run in _runs(report) if run.get("exit_code") != 0]
    return 1 if failed else 0


def _runs(report: dict[str, Any]) -> list[dict[str, Any]]:
    cases = [report[name] for name in ("a_latency", "a_rate_limits_off", "b_rpm") if name in report]
    two = report.get("c_two_processes")
    return [*cases, *(two["processes"].values() if two else [])]


if __name__ == "__main__":
    sys.exit(main())
