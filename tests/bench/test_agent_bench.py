"""`switchboard bench agent` end to end: a real server process, two scripted callers over SIP/RTP.

The figures themselves are the benchmark's business; this checks that they are real measurements: every
scripted line was spoken and answered, latencies come from audio that arrived, the barge-in was timed,
the agent's audio was seen packet by packet, and the server's CPU was read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.agent_calls import SCRIPT_LABELS
from tests.services import unavailable

pytestmark = pytest.mark.e2e

CALLS = 2
REPLY_TIMEOUT_S = 10.0


def _switchboard() -> list[str]:
    script = Path(sys.executable).with_name("switchboard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "switchboard"]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    if not Path("/proc/self/stat").exists():
        unavailable("the agent benchmark reads the server's CPU time from /proc (Linux)")
    command = [
        *_switchboard(),
        "bench",
        "agent",
        "--calls",
        str(CALLS),
        "--reply-timeout",
        str(REPLY_TIMEOUT_S),
        "--arrivals",
        "lockstep",  # every turn counts (spread arrivals count only turns while all calls are up)
        "--json",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "p95" in completed.stderr  # the human-readable table
    parsed: dict[str, Any] = json.loads(completed.stdout)
    return parsed


def test_every_scripted_line_was_spoken_and_answered(report: dict[str, Any]) -> None:
    (run,) = report["runs"]
    assert run["calls"] == CALLS
    assert run["dropped_calls"] == 0, run["dropped_reasons"]
    assert run["turns"] == CALLS * len(SCRIPT_LABELS)
    for call in range(CALLS):
        turns = [t for t in run["turn_records"] if t["call"] == call]
        assert [t["label"] for t in turns] == list(SCRIPT_LABELS)
        assert [t["line"] for t in turns] == list(range(len(SCRIPT_LABELS)))
    assert [line["label"] for line in report["script"]] == list(SCRIPT_LABELS)
    # The server's turn telemetry saw the callers' utterances; two calls leave its speech workers far
    # from the load at which they decode the cheaper way.
    assert run["utterances_decoded"] >= CALLS * (len(SCRIPT_LABELS) - 1)
    assert run["economy_decoded_percent"] == 0.0
    assert run["deep_economy_decoded_percent"] == 0.0
    # The lead-in and the pauses inside the lines decoded with them, but not all of their silence.
    assert 1.0 < run["decoded_audio_per_speech"] < 1.3
    # What the server heard the callers say, against the script (5.2 % in a run of these two calls).
    assert 0.0 <= run["caller_wer_percent"] <= 15.0


def test_latencies_are_measured_from_the_audio(report: dict[str, Any]) -> None:
    (run,) = report["runs"]
    records = run["turn_records"]
    for turn in records:
        assert isinstance(turn["latency_ms"], float), turn
        assert 0 < turn["latency_ms"] < REPLY_TIMEOUT_S * 1000, turn
    answered = sorted(t["latency_ms"] for t in records if not t["premature"])
    latency = run["turn_latency_ms"]
    assert latency["n"] == len(answered)
    if answered:  # percentiles are taken over the turns the agent did not answer too early
        assert latency["p50"] in answered and latency["max"] == answered[-1]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert 0 <= run["premature_replies"] == sum(t["premature"] for t in records) < len(records)


def test_barge_in_was_timed_on_the_agents_audio(report: dict[str, Any]) -> None:
    (run,) = report["runs"]
    stops = [t["barge_in_stop_ms"] for t in run["turn_records"] if t["label"] == "barge_in"]
    assert len(stops) == CALLS
    # The agent was talking when the caller started (1 s into its reply) and stopped within seconds.
    assert all(0 <= stop < 3000 for stop in stops), stops
    assert run["barge_in_stop_ms"]["n"] == CALLS
    assert run["barge_in_stop_ms"]["max"] == max(stops)


def test_agent_audio_and_server_cpu_were_observed(report: dict[str, Any]) -> None:
    (run,) = report["runs"]
    assert run["packets_missed_by_tap"] == 0
    # Eight replies from the agent, several of them sentences long, on each call.
    assert run["agent_speech_minutes"] > 0.1 * CALLS
    assert run["audio_gaps_per_minute"] == pytest.approx(
        run["audio_gaps_40ms"] / run["agent_speech_minutes"], rel=0.05, abs=0.05
    )
    assert 0 < run["server_cpu_percent_per_call"] < 200
    assert run["server_cpu_percent"] == pytest.approx(run["server_cpu_percent_per_call"] * CALLS, abs=0.1)
    assert run["cpu_window_s"] > 1
    assert report["largest_calls_p95_within_500ms"] in (None, CALLS)


def test_spread_arrivals_count_only_turns_while_every_call_was_up() -> None:
    from bench.agent import RunResult, summarise
    from bench.agent_calls import CallOutcome, TurnMeasure

    def call(index: int, times: list[float]) -> CallOutcome:
        outcome = CallOutcome(index)
        for line, at in enumerate(times):
            outcome.turns.append(
                TurnMeasure(index, line, SCRIPT_LABELS[line], 100.0 * (line + 1), False, at=at)
            )
        return outcome

    result = RunResult(
        calls=2,
        outcomes=[call(0, [1.0, 5.0, 12.0]), call(1, [10.0, 14.0, 25.0])],
        cpu_window_s=10.0,
        server_cpu_s=1.0,
        window=(10.0, 20.0),  # call 1 answered at 10 s, call 0 hung up at 20 s
        whole_run_s=30.0,
        generator_cpu_s=0.5,
        generator_tick_lateness_ms=[],
        load_average_before=0.0,
        host_python_loop_ms=50.0,
    )
    spread = summarise(result)
    assert spread["turns"] == 3 and spread["turns_in_ramp"] == 3  # at 12, 10 and 14 s; not 1, 5, 25
    assert spread["turn_latency_ms"]["n"] == 3 and spread["turn_latency_ms"]["max"] == 300.0
    assert len(spread["turn_records"]) == 6
    result.arrivals = "lockstep"
    assert summarise(result)["turns"] == 6
