"""The clause cache in front of the synthesiser."""

from __future__ import annotations

import threading

import pytest

from agent.tts import EspeakSynthesizer
from agent.tts_cache import CachingSynthesizer


def test_repeated_clauses_come_from_the_cache_and_match_the_engine() -> None:
    engine = EspeakSynthesizer()
    cache = CachingSynthesizer(engine)
    first = cache.synthesize_8k("Anything else I can help with?")
    again = cache.synthesize_8k("Anything else I can help with?")
    assert first == again  # the same audio object, not a second rendering (espeak varies slightly)
    fresh = engine.synthesize_8k("Anything else I can help with?")
    assert abs(len(fresh) - len(first)) <= 640
    assert (cache.hits, cache.misses) == (1, 1)
    assert b"".join(cache.stream_8k("Anything else I can help with?")) == first


def test_the_cache_stays_within_its_size_least_recently_used_out_first() -> None:
    engine = EspeakSynthesizer()
    goodbye, hello, thanks = (
        len(engine.synthesize_8k(t)) for t in ("Goodbye.", "Hello.", "Thanks for calling.")
    )
    # Room for "Goodbye." and "Thanks for calling." but not "Hello." as well.
    cache = CachingSynthesizer(engine, max_bytes=goodbye + thanks + hello // 2)
    cache.synthesize_8k("Goodbye.")
    cache.synthesize_8k("Hello.")
    cache.synthesize_8k("Goodbye.")  # now the most recent
    cache.synthesize_8k("Thanks for calling.")  # evicts "Hello."
    misses = cache.misses
    cache.synthesize_8k("Goodbye.")
    assert cache.misses == misses
    cache.synthesize_8k("Hello.")
    assert cache.misses == misses + 1


def test_threads_share_the_cache() -> None:
    cache = CachingSynthesizer(EspeakSynthesizer())
    cache.synthesize_8k("We're at 221 River Road.")
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.synthesize_8k("We're at 221 River Road.")))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and (cache.hits, cache.misses) == (8, 1)


def test_bad_size() -> None:
    with pytest.raises(ValueError):
        CachingSynthesizer(EspeakSynthesizer(), max_bytes=0)
