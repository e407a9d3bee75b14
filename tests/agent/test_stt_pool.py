"""Recognisers in worker processes: same transcripts as in-process, and the event loop stays responsive."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.stt import SpeechModel, SttError
from agent.stt_pool import RecognizerPool, loaded
from agent.tts import EspeakSynthesizer
from tests.agent.conftest import phone_line

LINES = ("i'd like to book an oil change", "on monday at ten in the morning", "yes")


@pytest.fixture(scope="module")
def pool(speech_model: SpeechModel) -> Iterator[RecognizerPool]:
    recognizers = RecognizerPool(functools.partial(loaded, speech_model), processes=2)
    yield recognizers
    recognizers.close()


@pytest.fixture(scope="module")
def audio() -> list[bytes]:
    synth = EspeakSynthesizer(variant="m3")
    return [phone_line(line, synth) for line in LINES]


def test_pooled_recognisers_give_the_in_process_transcripts(
    pool: RecognizerPool, speech_model: SpeechModel, audio: list[bytes]
) -> None:
    pooled = pool.new_recognizer()
    local = speech_model.new_recognizer()
    for pcm in audio:
        pooled.start_utterance()
        partials = []
        for start in range(0, len(pcm), 1600):  # 100 ms batches, as the session feeds them
            pooled.feed(pcm[start : start + 1600])
            partials.append(pooled.partial())
        text = pooled.end_utterance()
        assert text == local.transcribe(pcm)
        assert any(partials), "partials come back with each feed"
    pooled.close()
    pooled.close()  # idempotent


def test_errors_in_a_worker_come_back_as_stt_errors(pool: RecognizerPool) -> None:
    recognizer = pool.new_recognizer()
    with pytest.raises(SttError, match="RuntimeError"):
        recognizer.end_utterance()  # no utterance open
    with pytest.raises(ValueError):
        recognizer.feed(b"\x00")
    recognizer.start_utterance()  # the recogniser still works afterwards
    recognizer.feed(bytes(3200))
    assert recognizer.end_utterance() == ""
    recognizer.close()


def test_the_event_loop_keeps_its_timing_while_calls_decode(
    pool: RecognizerPool, speech_model: SpeechModel, audio: list[bytes]
) -> None:
    """The reason for the pool: in-process pocketsphinx holds the GIL for whole decodes (measured: loop
    wake-up lag p99 ~150 ms with one decoding thread); through the pool the loop keeps its 20 ms beat."""

    def decode_forever(make: object, stop: list[bool]) -> None:
        recognizer = make()  # type: ignore[operator]
        while not stop:
            recognizer.start_utterance()
            for pcm in audio:
                recognizer.feed(pcm)
            recognizer.end_utterance()

    async def lag_while(make: object) -> float:
        stop: list[bool] = []
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(2) as executor:
            workers = [loop.run_in_executor(executor, decode_forever, make, stop) for _ in range(2)]
            await asyncio.sleep(0.3)
            lags = []
            for _ in range(100):
                started = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - started - 0.01)
            stop.append(True)
            await asyncio.gather(*workers)
        return sorted(lags)[98]

    pooled_lag = asyncio.run(lag_while(pool.new_recognizer))
    in_process_lag = asyncio.run(lag_while(speech_model.new_recognizer))
    assert pooled_lag < in_process_lag / 2, (pooled_lag, in_process_lag)
    assert pooled_lag < 0.05, pooled_lag


def test_a_worker_that_cannot_build_its_engine_fails_the_pool_clearly() -> None:
    with pytest.raises(SttError, match="failed to start: SttError: no model here"):
        RecognizerPool(functools.partial(_broken, "no model here"), processes=1)


def _broken(message: str) -> SpeechModel:
    raise SttError(message)
