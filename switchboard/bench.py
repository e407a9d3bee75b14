"""`switchboard bench ...`: capacity figures printed as JSON lines (benchmarks, not tests)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_bench_commands(commands: Any) -> None:
    """Register `bench` and its subcommands on the top-level subparsers object."""
    bench = commands.add_parser("bench", help="run a capacity benchmark and print JSON figures")
    kinds = bench.add_subparsers(dest="bench", required=True)
    media = kinds.add_parser(
        "media", help="N concurrent RTP calls through our media path against a load generator process"
    )
    media.add_argument(
        "--calls",
        type=_counts,
        action="extend",
        required=True,
        help="concurrent calls; repeat or give a comma list (e.g. 100,300,500,1000)",
    )
    media.add_argument("--seconds", type=float, default=30.0, help="measurement window per N (default 30)")
    media.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (default 2)")
    media.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    media.add_argument(
        "--reader",
        choices=("epoll", "endpoints"),
        default="epoll",
        help="read RTP through one epoll set (default) or one asyncio endpoint per socket",
    )
    media.add_argument(
        "--phases", type=int, default=4, help="media clock timers spread over the 20 ms (default 4, as serve)"
    )
    media.add_argument("--ports", default="50000-54999", help="UDP port range for the calls' RTP/RTCP")
    media.set_defaults(handler=_bench_media)

    outbox = kinds.add_parser(
        "outbox", help="outbox delivery throughput (one Celery worker) and the call-path cost of the record"
    )
    outbox.add_argument("--writes", type=int, default=2000, help="writes to deliver (default 2000)")
    outbox.add_argument("--bookings", type=int, default=300, help="bookings timed per variant (default 300)")
    outbox.add_argument("--concurrency", type=int, default=1, help="worker pool processes (default 1)")
    outbox.set_defaults(handler=_bench_outbox)

    agent = kinds.add_parser(
        "agent",
        help="end-to-end turn latency of N concurrent scripted SIP/RTP callers against `switchboard serve`",
    )
    agent.add_argument(
        "--calls",
        type=_counts,
        action="extend",
        help="concurrent calls; repeat or give a comma list (default 1,10,50,100)",
    )
    agent.add_argument(
        "--arrivals",
        choices=("spread", "lockstep"),
        default="spread",
        help="spread: call starts evenly over --spread-seconds, figures from the turns while all N are "
        "up (default); lockstep: starts --seconds-between-calls apart, every caller saying the same line "
        "at once",
    )
    agent.add_argument(
        "--spread-seconds", type=float, default=20.0, help="spread arrivals over this long (default 20)"
    )
    agent.add_argument(
        "--seconds-between-calls",
        type=float,
        default=0.05,
        help="lockstep: stagger between call starts (default 0.05: 20 per second)",
    )
    agent.add_argument(
        "--reply-timeout", type=float, default=10.0, help="seconds to wait for each reply (default 10)"
    )
    agent.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the callers' loop")
    agent.add_argument(
        "--keep", action="store_true", help="keep the scratch directory (server logs, databases)"
    )
    agent.add_argument(
        "--json", action="store_true", help="print the figures and every turn as JSON on stdout"
    )
    agent.set_defaults(handler=_bench_agent)

    crm = kinds.add_parser("crm", help="p50/p95 latency of each agent tool on a large PostgreSQL CRM")
    crm.add_argument("--customers", type=int, default=100_000)
    crm.add_argument("--bookings", type=int, default=1_000_000)
    crm.add_argument("--iterations", type=int, default=400, help="calls per tool (default 400)")
    crm.add_argument("--postgres", help="admin URL of the PostgreSQL server (default: the test server)")
    crm.add_argument("--keep", action="store_true", help="keep the scratch database")
    crm.set_defaults(handler=_bench_crm)


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of call counts: {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"call counts must be positive: {text!r}")
    return counts


def _bench_media(args: argparse.Namespace) -> int:
    try:
        from bench.media import as_json, run_media_bench
    except ImportError as exc:  # bench/ sits beside the packages; run from the project root
        print(
            f"switchboard bench: {exc} (run `python -m switchboard bench` from the project root)",
            file=sys.stderr,
        )
        return 1
    low, _, high = args.ports.partition("-")
    if not (low.isdigit() and high.isdigit()):
        print(f"switchboard bench media: --ports wants LOW-HIGH, not {args.ports!r}", file=sys.stderr)
        return 2
    ports = (int(low), int(high))
    use_uvloop = args.loop == "uvloop"
    best: int | None = None
    for calls in args.calls:
        try:
            result = run_media_bench(
                calls,
                args.seconds,
                warmup=args.warmup,
                use_uvloop=use_uvloop,
                shared_reader=args.reader == "epoll",
                phases=args.phases,
                ports=ports,
            )
        except OSError as exc:
            print(f"switchboard bench media: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(as_json(result)), flush=True)
        if result.met_target:
            best = max(best or 0, calls)
    print(json.dumps({"largest_calls_meeting_target": best}))
    return 0


def _bench_agent(args: argparse.Namespace) -> int:
    try:
        from bench.agent import (
            format_table,
            largest_meeting_target,
            run_agent_bench,
            scratch_dir,
            script_outline,
            summarise,
        )
    except ImportError as exc:
        print(f"switchboard bench: {exc} (run from the project root)", file=sys.stderr)
        return 1
    summaries = []
    with scratch_dir(args.keep) as workdir:
        for calls in args.calls or [1, 10, 50, 100]:
            try:
                result = run_agent_bench(
                    calls,
                    workdir=workdir,
                    arrivals=args.arrivals,
                    spread_s=args.spread_seconds,
                    seconds_between_calls=args.seconds_between_calls,
                    reply_timeout=args.reply_timeout,
                    use_uvloop=args.loop == "uvloop",
                )
            except OSError as exc:
                print(f"switchboard bench agent: {exc}", file=sys.stderr)
                return 1
            summaries.append(summarise(result))
            print(f"bench agent: {calls} calls done", file=sys.stderr, flush=True)
    print(format_table(summaries), file=sys.stderr)
    if args.json:
        best = largest_meeting_target(summaries)
        document = {"script": script_outline(), "runs": summaries, "largest_calls_p95_within_500ms": best}
        print(json.dumps(document))
    return 0


def _bench_crm(args: argparse.Namespace) -> int:
    try:
        from bench.crm_tools import main as crm_main
    except ImportError as exc:
        print(f"switchboard bench: {exc} (run from the project root)", file=sys.stderr)
        return 1
    argv = [f"--customers={args.customers}", f"--bookings={args.bookings}", f"--iterations={args.iterations}"]
    if args.postgres:
        argv.append(f"--postgres={args.postgres}")
    if args.keep:
        argv.append("--keep")
    return crm_main(argv)


def _bench_outbox(args: argparse.Namespace) -> int:
    try:
        from bench.outbox import run_outbox_bench
    except ImportError as exc:
        print(f"switchboard bench: {exc} (run from the project root)", file=sys.stderr)
        return 1
    result = run_outbox_bench(writes=args.writes, bookings=args.bookings, concurrency=args.concurrency)
    print(json.dumps(result), flush=True)
    return 0
