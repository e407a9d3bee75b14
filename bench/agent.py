"""End-to-end agent latency: N concurrent callers over real SIP/RTP against a `switchboard serve` process.

The server runs as it does in production (its own process, uvloop, SQLite in a scratch directory, the
demo business). The callers are one asyncio process of ours on loopback, each a `telephony.sip` user agent
call that works through the same dialogue: book a service (the demo customers call from their own
numbers; days and times are spread so the bays do not run out), ask for an order, ask about a part, ask
for the opening hours and talk over the answer about 1 s into it, say goodbye. Two lines carry a
mid-sentence pause ("on tuesday at ten thirty" ... 600 ms ... "in the morning"), synthesised as one
utterance, to catch an agent that ends the caller's turn too early.

Everything is measured at the caller from the audio, never from the server's own logs:

* turn latency: the end of the caller's last speech sample, dated from when its packet left (as
  `switchboard.caller` does), to the first agent packet with speech in it received after that. The
  percentiles leave out turns with a premature reply (below), whose "latency" is often speech already
  under way; every turn's figure is in `turn_records` and `turn_latency_all_turns_ms`.
* barge-in stop time: the caller's first speech packet sent to the last agent speech packet received
  before the agent falls silent (a run of speech packets less than 400 ms apart, counted from onset).
* premature replies: turns in which an agent talkspurt began after the caller started the line and
  before the caller finished it.
* audio gaps: our RTP sender sends one packet per 20 ms at all times and marks the first packet of each
  talkspurt (RFC 3550 marker bit, set after silence or a flush); a gap is an inter-arrival time >= 40 ms
  between packets from a marker up to the last speech packet of that talkspurt, counted per minute of
  such agent audio.
* CPU per call: the server process's user + system time (/proc/<pid>/stat) while all N calls were up
  (from the last answer to the first hang-up; the whole run when those do not overlap), divided by N.
* dropped calls: calls that failed to set up, ended before the script did, or got no reply in time.
* recognition: from the server's log (its turn telemetry), the share of caller utterances a speech worker
  decoded on cheaper settings because it was behind (agent/stt_pool.py), and the caller audio decoded
  per second of caller speech (what recognition cost beyond the words); from its database, the word
  error rate of what it heard each completed call's caller say against the script.

The load generator stays light: caller audio is synthesised once before the calls, speech is detected by
energy alone (no recognition). One unmeasured warm-up call goes first. The generator reports its own CPU
and media-clock stalls: if its loop was held up, its timestamps (and so gaps and latencies) would be too.

Arrivals. N calls "at once" can mean two loads, and both are measured:

* ``spread`` (default): call starts are spread evenly over ``spread_s`` seconds (20 s, about half a
  call), so the calls are at different points of their dialogues, as a contact center's calls are. The
  headline figures (latency percentiles, CPU per call) count only turns the caller began while all N
  calls were up (from the last answer to the first hang-up); turns of the ramp are reported apart.
* ``lockstep``: starts 0.05 s apart, so all N callers say the same line within a moment of each other,
  a synchronised burst on the recognisers. Every turn counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.agent_calls import (
    HOST,
    SCRIPT_LABELS,
    WARM_UP,
    CallerScript,
    CallOutcome,
    Line,
    LineAudio,
    booking_slots,
    demo_script,
    run_call,
    synthesize_scripts,
)
from bench.host import python_loop_ms
from bench.wer import word_error_rate
from telephony.media import MediaClock, RtpPortPool
from telephony.sip.ua import UserAgent

TARGET_P95_MS = 500.0
SPREAD_S = 20.0  # spread arrivals: starts evenly over this long (a call lasts ~40 s)
LOCKSTEP_GAP_S = 0.05
Arrivals = Literal["spread", "lockstep"]


# --- the server under test -----------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads, from /proc/<pid>/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    fields = data[data.rindex(b")") + 2 :].split()  # the name in parentheses may contain spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc/<child>/stat (field 4)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        if int(data[data.rindex(b")") + 2 :].split()[1]) == pid:
            children.append(int(entry))
    return children


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """`switchboard serve` on free ports with a fresh SQLite database; the speech model cache in
    `data_dir` is shared between runs so only the first one pays for building it."""

    def __init__(self, data_dir: Path, database: Path, calls: int) -> None:
        self.http_port = _free_port(socket.SOCK_STREAM)
        self.sip_port = _free_port(socket.SOCK_DGRAM)
        self.database = database
        self.log_path = database.with_suffix(".log")
        rtp_low = random.randrange(20000, 36000, 2)
        env = dict(
            os.environ,
            SWITCHBOARD_DATA_DIR=str(data_dir),
            SWITCHBOARD_DATABASE_URL=f"sqlite:///{database}",
            SWITCHBOARD_RTP_PORT_MIN=str(rtp_low),
            SWITCHBOARD_RTP_PORT_MAX=str(rtp_low + 4 * calls + 40),  # room to skip ports others hold
            SWITCHBOARD_MAX_CALLS=str(calls + 10),
        )
        script = Path(sys.executable).with_name("switchboard")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "switchboard"]
        command += ["serve", "--http-port", str(self.http_port), "--sip-port", str(self.sip_port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def target(self) -> str:
        return f"sip:agent@{HOST}:{self.sip_port}"

    def wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.http_port}/healthz"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OSError(f"switchboard serve exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if json.load(response).get("status") == "ok":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise OSError(f"switchboard serve did not become healthy in {timeout:.0f} s: {self.log_tail()}")

    def cpu_seconds(self) -> float:
        """The server's CPU including its child processes (the speech-recognition workers)."""
        pids = [self.process.pid, *_children(self.process.pid)]
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):  # a child may have just exited
                total += process_cpu_seconds(pid)
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def recognition(self) -> Recognition | None:
        """What the speech workers decoded over the run, from the turn telemetry in the server's log; None
        if unreadable."""
        figures = Recognition()
        try:
            with self.log_path.open(encoding="utf-8", errors="replace") as log:
                for line in log:
                    _, marker, record = line.partition("switchboard.telemetry: ")
                    if not marker:
                        continue
                    try:
                        fields = json.loads(record)
                    except ValueError:
                        continue
                    if fields.get("kind") == "utterance":
                        figures.add(fields)
        except OSError:
            return None
        return figures

    def bookings_made(self) -> int | None:
        """Bookings the calls confirmed (the seed's own booking has no source call); None if unreadable.

        Not a latency figure, but it shows whether the dialogues went where the script meant them to.
        """
        rows = self._query(
            "SELECT count(*) FROM bookings WHERE source_call_id IS NOT NULL AND status = 'confirmed'"
        )
        return None if rows is None else int(rows[0][0])

    def caller_transcripts(self) -> dict[str, str] | None:
        """What the server heard each caller say, all turns of a call in order, by call id; None if
        unreadable."""
        rows = self._query(
            "SELECT call_id, text FROM turns WHERE speaker = 'caller' ORDER BY call_id, \"index\""
        )
        if rows is None:
            return None
        heard: dict[str, list[str]] = {}
        for call_id, text in rows:
            heard.setdefault(call_id, []).append(text)
        return {call_id: " ".join(texts) for call_id, texts in heard.items()}

    def _query(self, sql: str) -> list[Any] | None:
        """Rows of a query on the server's database, opened read-only; None if unreadable."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)) as db:
                return db.execute(sql).fetchall()
        except sqlite3.Error:
            return None


@dataclass(slots=True)
class Recognition:
    """Caller utterances over a run and what decoding them took."""

    utterances: int = 0
    economy: int = 0  # decoded a cheaper way by a speech worker that was behind
    deep_economy: int = 0  # of those, decoded the cheapest way (requests were waiting on the worker)
    speech_ms: float = 0.0  # the callers' turns, first to last voiced frame
    decoded_ms: float = 0.0  # audio the recognisers decoded for them (lead-in, pauses, re-decoding)

    def add(self, fields: dict[str, Any]) -> None:
        self.utterances += 1
        self.economy += bool(fields.get("stt_economy"))
        self.deep_economy += int(fields.get("stt_economy_depth") or 0) >= 2
        self.speech_ms += float(fields.get("speech_ms") or 0.0)
        self.decoded_ms += float(fields.get("stt_audio_ms") or 0.0)


# --- a run at one N ------------------------------------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    calls: int
    outcomes: list[CallOutcome]
    cpu_window_s: float
    server_cpu_s: float
    window: tuple[float, float]  # monotonic times when all calls were up (or the whole run, see below)
    whole_run_s: float
    generator_cpu_s: float
    generator_tick_lateness_ms: list[float]
    load_average_before: float
    host_python_loop_ms: float
    bookings_made: int | None = None
    recognition: Recognition | None = None  # over the whole run
    heard: dict[str, str] | None = None  # every caller's turns as the server transcribed them, by call id
    arrivals: Arrivals = "spread"


def _pass() -> None:
    pass


def _cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run_calls(
    server: ServerProcess,
    scripts: Sequence[CallerScript],
    audio: dict[tuple[str, Line], LineAudio],
    starts: Sequence[float],
    reply_timeout: float,
) -> RunResult:
    clock = MediaClock()
    ua = UserAgent(
        advertised_host=HOST,
        port_pool=RtpPortPool(40000, 59999, shared_reader=False),  # see tap_packets
        clock=clock,
        user="caller",
        tcp=False,
    )
    await ua.start(HOST, 0)
    await run_call(
        ua, server.target, -1, WARM_UP, audio, reply_timeout=reply_timeout, on_answered=_pass, on_ended=_pass
    )
    # (monotonic time, server CPU seconds) at each answer and each hang-up: the window is chosen after.
    answers: list[tuple[float, float]] = []
    ends: list[tuple[float, float]] = []

    def sample(into: list[tuple[float, float]]) -> None:
        into.append((time.monotonic(), server.cpu_seconds()))

    async def one(index: int) -> CallOutcome:
        return await run_call(
            ua,
            server.target,
            index,
            scripts[index],
            audio,
            reply_timeout=reply_timeout,
            on_answered=lambda: sample(answers),
            on_ended=lambda: sample(ends),
        )

    load_before = os.getloadavg()[0]
    host_speed = python_loop_ms()
    clock.tick_log = []
    generator_before = _cpu_now()
    start = (time.monotonic(), server.cpu_seconds())
    try:
        tasks = []
        began = time.monotonic()
        for index, offset in enumerate(starts):
            await asyncio.sleep(max(0.0, began + offset - time.monotonic()))
            tasks.append(asyncio.create_task(one(index)))
        outcomes = list(await asyncio.gather(*tasks))
    finally:
        generator_cpu = _cpu_now() - generator_before
        tick_log, clock.tick_log = clock.tick_log or [], None
        await ua.close()
    finish = (time.monotonic(), server.cpu_seconds())
    window = (start, finish)
    if answers and ends:
        window = (max(answers), min(ends))
        if window[1][0] - window[0][0] < 1.0:  # the calls never all overlapped: use their whole span
            window = (min(answers), max(ends))
    return RunResult(
        calls=len(scripts),
        outcomes=outcomes,
        cpu_window_s=window[1][0] - window[0][0],
        server_cpu_s=window[1][1] - window[0][1],
        window=(window[0][0], window[1][0]),
        whole_run_s=finish[0] - start[0],
        generator_cpu_s=generator_cpu,
        generator_tick_lateness_ms=[lateness * 1000 for lateness, _ in tick_log],
        load_average_before=load_before,
        host_python_loop_ms=host_speed,
    )


def run_agent_bench(
    calls: int,
    *,
    workdir: Path,
    arrivals: Arrivals = "spread",
    spread_s: float = SPREAD_S,
    seconds_between_calls: float = LOCKSTEP_GAP_S,
    reply_timeout: float = 10.0,
    use_uvloop: bool = True,
) -> RunResult:
    """One server, `calls` concurrent callers; the server is stopped before this returns."""
    if arrivals == "spread":
        starts = [index * spread_s / calls for index in range(calls)]
    else:
        starts = [index * seconds_between_calls for index in range(calls)]
    slots = booking_slots()
    scripts = [demo_script(index, slots) for index in range(calls)]
    audio = synthesize_scripts([*scripts, WARM_UP])
    server = ServerProcess(workdir, workdir / f"calls-{calls}.db", calls)
    try:
        server.wait_healthy()
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        if use_uvloop:
            import uvloop

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            result = runner.run(_run_calls(server, scripts, audio, starts, reply_timeout))
    finally:
        server.stop()
    result.bookings_made = server.bookings_made()
    result.recognition = server.recognition()
    result.heard = server.caller_transcripts()
    result.arrivals = arrivals
    return result


@contextlib.contextmanager
def scratch_dir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="switchboard-bench-agent-"))
    try:
        yield path
    finally:
        if keep:
            print(f"bench agent: kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- figures -------------------------------------------------------------------------------------------


def _percentile(ordered: Sequence[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1)


def _spread(values: Sequence[float], *fractions: float) -> dict[str, float | int | None]:
    ordered = sorted(values)
    figures: dict[str, float | int | None] = {"n": len(ordered)}
    for fraction in fractions:
        figures[f"p{round(fraction * 100)}"] = _percentile(ordered, fraction)
    figures["max"] = round(ordered[-1], 1) if ordered else None
    return figures


def summarise(result: RunResult) -> dict[str, Any]:
    outcomes = result.outcomes
    every_turn = [turn for outcome in outcomes for turn in outcome.turns]
    recognition = result.recognition
    # What the server's recogniser made of each completed call's lines, the way it decoded them under this
    # load (economy decoding included): the words a caller says that the agent does not get.
    heard = result.heard or {}
    transcribed = [(o.said, heard.get(o.call_id, "")) for o in outcomes if o.call_id and not o.dropped]
    # The turns begun while all calls were up; the rest (the ramp up and down of spread arrivals) apart.
    low, high = result.window
    if result.arrivals == "lockstep":
        turns, ramp = every_turn, []
    else:
        turns = [t for t in every_turn if low <= t.at <= high]
        ramp = [t for t in every_turn if not low <= t.at <= high]
    # A premature reply's "latency" is often that of speech already under way when the caller finished
    # (a few ms): it is no reply time, so those turns are counted apart and left out of the percentiles.
    latencies = [t.latency_ms for t in turns if t.latency_ms is not None and not t.premature]
    dropped = [o for o in outcomes if o.dropped is not None]
    reasons: dict[str, int] = {}
    for outcome in dropped:
        key = (
            f"{outcome.dropped} at {outcome.dropped_at_line}"
            if outcome.dropped_at_line
            else str(outcome.dropped)
        )
        reasons[key] = reasons.get(key, 0) + 1
    by_line: dict[str, dict[str, Any]] = {}
    for label in SCRIPT_LABELS:
        mine = [t for t in turns if t.label == label]
        by_line[label] = {
            **_spread([t.latency_ms for t in mine if t.latency_ms is not None], 0.5, 0.95),
            "premature": sum(t.premature for t in mine),
        }
    speech_minutes = sum(o.talkspurt_packets for o in outcomes) * 0.020 / 60
    gaps = sum(o.gaps for o in outcomes)
    server_cpu = 100 * result.server_cpu_s / result.cpu_window_s if result.cpu_window_s > 0 else None
    lateness = sorted(result.generator_tick_lateness_ms)
    latency = _spread(latencies, 0.5, 0.95, 0.99)
    return {
        "calls": result.calls,
        "arrivals": result.arrivals,
        "dropped_calls": len(dropped),
        "dropped_reasons": reasons,
        "turns": len(turns),
        "turns_per_call": len(SCRIPT_LABELS),
        "turn_latency_ms": latency,
        "turns_in_ramp": len(ramp),
        "turn_latency_ramp_ms": _spread(
            [t.latency_ms for t in ramp if t.latency_ms is not None and not t.premature], 0.5, 0.95, 0.99
        ),
        "premature_replies_in_ramp": sum(t.premature for t in ramp),
        "turn_latency_all_turns_ms": _spread(
            [t.latency_ms for t in turns if t.latency_ms is not None], 0.5, 0.95, 0.99
        ),
        "turn_latency_by_line_ms": by_line,
        "barge_in_stop_ms": _spread(
            [t.barge_in_stop_ms for t in turns if t.barge_in_stop_ms is not None], 0.5, 0.95
        ),
        "premature_replies": sum(t.premature for t in turns),
        "packets_missed_by_tap": sum(o.tap_missed for o in outcomes),
        "audio_gaps_40ms": gaps,
        "agent_speech_minutes": round(speech_minutes, 2),
        "audio_gaps_per_minute": round(gaps / speech_minutes, 2) if speech_minutes else None,
        "server_cpu_percent": None if server_cpu is None else round(server_cpu, 1),
        "server_cpu_percent_per_call": None if server_cpu is None else round(server_cpu / result.calls, 2),
        "cpu_window_s": round(result.cpu_window_s, 1),
        "setup_ms": _spread([o.setup_ms for o in outcomes if o.setup_ms is not None], 0.5, 0.95),
        "bookings_made": result.bookings_made,
        # Caller utterances (whole run) the speech workers decoded on their cheaper settings because they
        # were behind (SWITCHBOARD_STT_ECONOMY_AT): fewer of them means better recognition.
        "utterances_decoded": None if recognition is None else recognition.utterances,
        "economy_decoded_percent": None
        if not recognition or not recognition.utterances
        else round(100 * recognition.economy / recognition.utterances, 1),
        "deep_economy_decoded_percent": None
        if not recognition or not recognition.utterances
        else round(100 * recognition.deep_economy / recognition.utterances, 1),
        "caller_wer_percent": round(100 * word_error_rate(transcribed), 1)
        if transcribed and result.heard is not None
        else None,
        # Audio decoded per second of caller speech: the lead-in before each turn, its pauses and
        # hangover, and turns decoded again after an undone early finalisation make it more than 1.
        "decoded_audio_per_speech": None
        if not recognition or not recognition.speech_ms
        else round(recognition.decoded_ms / recognition.speech_ms, 2),
        "run_seconds": round(result.whole_run_s, 1),
        "load_average_before": round(result.load_average_before, 2),
        "host_python_loop_ms": result.host_python_loop_ms,
        "generator_cpu_percent": round(100 * result.generator_cpu_s / result.whole_run_s, 1)
        if result.whole_run_s
        else None,
        "generator_tick_lateness_p99_ms": _percentile(lateness, 0.99),
        # The callers' own loop held up this long could fake gaps and latency: should stay near 0.
        "generator_stalls_20ms": sum(1 for late in lateness if late >= 20.0),
        "meets_target": latency["p95"] is not None and latency["p95"] <= TARGET_P95_MS,
        "turn_records": [turn.as_json() for turn in every_turn],
    }


def script_outline() -> list[dict[str, Any]]:
    """The first caller's lines ("..." marks a pause inside a line), for readers of the JSON."""
    return [
        {"label": line.label, "text": line.text, "pause_ms": line.pause_ms, "barge_in": line.barge_in}
        for line in demo_script(0, booking_slots()).lines
    ]


def largest_meeting_target(summaries: Sequence[dict[str, Any]]) -> int | None:
    meeting = [s["calls"] for s in summaries if s["meets_target"]]
    return max(meeting) if meeting else None


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    header = (
        f"{'calls':>5} {'arrivals':>8} {'drop':>4} {'turns':>5} {'p50':>6} {'p95':>6} {'p99':>6}  "
        f"{'barge-in p50/p95/max':>20} {'cpu%/call':>9} {'premature':>9} {'gaps/min':>8} {'economy%':>8} "
        f"{'deep%':>5} {'decoded':>7} {'wer%':>5}"
    )
    rows = [header]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for s in summaries:
        latency, barge = s["turn_latency_ms"], s["barge_in_stop_ms"]
        barge_text = f"{ms(barge['p50'])}/{ms(barge['p95'])}/{ms(barge['max'])}"
        cpu = s["server_cpu_percent_per_call"]
        gaps = s["audio_gaps_per_minute"]
        economy = s.get("economy_decoded_percent")
        deep = s.get("deep_economy_decoded_percent")
        decoded = s.get("decoded_audio_per_speech")
        wer = s.get("caller_wer_percent")
        rows.append(
            f"{s['calls']:>5} {s['arrivals']:>8} {s['dropped_calls']:>4} {s['turns']:>5} "
            f"{ms(latency['p50']):>6} "
            f"{ms(latency['p95']):>6} {ms(latency['p99']):>6}  {barge_text:>20} "
            f"{'-' if cpu is None else f'{cpu:.1f}':>9} {s['premature_replies']:>9} "
            f"{'-' if gaps is None else f'{gaps:.1f}':>8} "
            f"{'-' if economy is None else f'{economy:.0f}':>8} "
            f"{'-' if deep is None else f'{deep:.0f}':>5} "
            f"{'-' if decoded is None else f'{decoded:.2f}':>7} "
            f"{'-' if wer is None else f'{wer:.1f}':>5}"
        )
    best = largest_meeting_target(summaries)
    rows.append(f"latencies in ms; largest N with p95 <= {TARGET_P95_MS:.0f} ms: {best if best else 'none'}")
    rows.append("economy%: caller utterances decoded a cheaper way by a speech worker that was busy")
    rows.append("deep%: of all caller utterances, those decoded the cheapest way (requests waiting on it)")
    rows.append("decoded: caller audio the recognisers decoded per second of caller speech")
    rows.append("wer%: word error rate of the server's transcripts of the callers' lines")
    return "\n".join(rows)
