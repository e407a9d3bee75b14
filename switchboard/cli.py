"""The `switchboard` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from switchboard.config import Settings


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        key: value
        for key, value in {
            "http_host": args.http_host,
            "http_port": args.http_port,
            "sip_host": args.sip_host,
            "sip_port": args.sip_port,
        }.items()
        if value is not None
    }
    try:
        settings = Settings.model_validate(overrides)
    except ValidationError as exc:
        print(f"switchboard serve: invalid settings: {_settings_problems(exc)}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    from switchboard.server import StartupError, run_server

    try:
        run_server(settings)
    except (OSError, StartupError) as exc:
        print(f"switchboard serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _settings_problems(exc: ValidationError) -> str:
    """Pydantic's errors as one line per problem, named by the environment variable that sets it."""
    problems = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        where = "_".join(str(part) for part in error["loc"]).upper()
        problems.append(f"SWITCHBOARD_{where}: {message}" if where else message)
    return "; ".join(problems)


def _call(args: argparse.Namespace) -> int:
    from switchboard.caller import format_dialogue, place_test_call
    from telephony.sip.ua import CallFailed

    if not args.say:
        print("switchboard call: give at least one --say line", file=sys.stderr)
        return 2
    _configure_logging("WARNING")
    api = args.api
    if api is None:
        host = args.target.split("@")[-1].split(":")[0].split(";")[0]
        api = f"http://{host}:8080"
    try:
        result = asyncio.run(
            place_test_call(
                args.target, from_number=args.from_number, lines=args.say, voice=args.voice, api=api
            )
        )
    except (CallFailed, ValueError, OSError) as exc:
        print(f"switchboard call: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_json()))
    else:
        print(format_dialogue(result))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from crm.migrate import upgrade_to_head

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.resolved_database_url)
    print(f"database at head: {settings.resolved_database_url}")
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="Contact-center voice agent backend")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API and the SIP/RTP agent in one process")
    serve.add_argument("--http-host")
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--sip-host")
    serve.add_argument("--sip-port", type=int)
    serve.set_defaults(handler=_serve)

    call = commands.add_parser("call", help="place a test call over SIP/RTP and print the dialogue")
    call.add_argument("target", help="SIP URI of the agent, e.g. sip:agent@127.0.0.1:5060")
    call.add_argument("--from", dest="from_number", default="+15550100001", help="caller number (From user)")
    call.add_argument("--say", action="append", default=[], help="a line to speak; repeat for each turn")
    call.add_argument("--voice", help="espeak-ng voice variant for the caller, e.g. f2, m3, klatt")
    call.add_argument("--api", help="base URL of the server's HTTP API (default: http://<sip host>:8080)")
    call.add_argument("--json", action="store_true", help="print one JSON object")
    call.set_defaults(handler=_call)

    migrate = commands.add_parser("migrate", help="upgrade the database to the newest schema")
    migrate.set_defaults(handler=_migrate)

    from workers.cli import add_worker_commands

    add_worker_commands(commands)

    from switchboard.bench import add_bench_commands

    add_bench_commands(commands)

    from crm.admin_cli import add_admin_commands

    add_admin_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
