"""`switchboard worker` and `switchboard beat`: Celery's worker and scheduler for this app."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_worker_commands(commands: Any) -> None:
    """Register `worker` and `beat` on the top-level subparsers object."""
    worker = commands.add_parser("worker", help="run a Celery worker delivering outbox writes (Redis)")
    worker.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--with-beat", action="store_true", help="also run the scheduler in this process")
    worker.set_defaults(handler=_worker)

    beat = commands.add_parser("beat", help="run the Celery scheduler that dispatches due outbox writes")
    beat.add_argument("--loglevel", default="INFO")
    beat.add_argument("--schedule", help="beat schedule file (default: <data_dir>/celerybeat-schedule)")
    beat.set_defaults(handler=_beat)


def _redis_configured(command: str) -> bool:
    from workers.config import WorkerSettings

    if WorkerSettings().redis_url is None:
        print(
            f"switchboard {command}: set SWITCHBOARD_REDIS_URL (e.g. redis://127.0.0.1:6379/0); without it"
            " `switchboard serve` delivers the outbox itself",
            file=sys.stderr,
        )
        return False
    return True


def _worker(args: argparse.Namespace) -> int:
    if not _redis_configured("worker"):
        return 2
    from workers.app import celery_app

    argv = ["worker", "--loglevel", args.loglevel, "--concurrency", str(args.concurrency)]
    if args.with_beat:
        argv.append("-B")
    celery_app.worker_main(argv)
    return 0


def _beat(args: argparse.Namespace) -> int:
    if not _redis_configured("beat"):
        return 2
    from workers.app import celery_app
    from workers.config import WorkerSettings

    settings = WorkerSettings()
    schedule = args.schedule or str(settings.data_dir / "celerybeat-schedule")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", "--loglevel", args.loglevel, "--schedule", schedule])
    return 0
