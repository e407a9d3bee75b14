"""Shared fixtures for the audio engines: the demo business, its speech model, and the phone path.

The evaluation sentences live here too so that bench/stt_wer.py measures exactly what the tests assert.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Final

import pytest

from agent.stt import SpeechModel
from agent.tts import EspeakSynthesizer
from agent.vocabulary import DomainVocabulary

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

DEMO_VOCABULARY: Final = DomainVocabulary(
    business_name="Riverside Auto Care",
    services=("oil change", "tire rotation", "brake inspection", "battery replacement", "full service"),
    products=(
        "wiper blades",
        "22 inch wiper blades",
        "front brake pads",
        "brake pads",
        "battery",
        "group 24F battery",
        "synthetic oil",
        "5W-30 synthetic oil",
        "tire",
        "tires",
        "205/55R16 tire",
    ),
    customer_names=("Dana Whitfield", "Marcus Lee", "Priya Raman"),
    order_numbers=("A1042", "B2077"),
)

# What the brief says callers of the demo business say (spoken forms, lower case).
CALLER_LINES: Final = (
    "i'd like to book an oil change",
    "can i get my brakes checked",
    "tomorrow at ten in the morning",
    "on saturday at ten in the morning",
    "next tuesday at two thirty in the afternoon",
    "yes",
    "yeah that's right",
    "no",
    "when is my appointment",
    "cancel my booking",
    "do you have wiper blades in stock",
    "how much is the synthetic oil",
    "what's the status of order a one zero four two",
    "order b two zero seven seven",
    "what are your opening hours",
    "where are you located",
    "can i talk to a person",
    "that's all thanks goodbye",
    "my name is dana whitfield",
)

# Phrased differently from anything domain_corpus() emits (test_stt checks that), with its words.
HELD_OUT_LINES: Final = (
    "hello i'd like an oil change tomorrow morning please",
    "could i get a brake inspection next tuesday at two thirty",
    "can you book me in for a full service on friday at nine a.m.",
    "i need to get my tires looked at on saturday",
    "do you have any openings wednesday afternoon",
    "how about thursday at eleven in the morning",
    "is friday at quarter past three okay",
    "the day after tomorrow at noon please",
    "yeah that works thanks",
    "no that's not right",
    "what time is my booking tomorrow",
    "i want to cancel my booking for friday",
    "could you move my appointment to next monday at four",
    "do you sell front brake pads please",
    "have you got synthetic oil in stock",
    "how much do the wiper blades cost",
    "how much is a battery replacement",
    "what's the price for a tire rotation please",
    "can you check order b two zero seven seven please",
    "i'm calling about my order number a one oh four two please",
    "has order b two zero seven seven come in",
    "what time do you close on saturday",
    "are you open this sunday",
    "what's your address please",
    "can i speak with a mechanic",
    "put me through to a real person please",
    "okay that's everything thank you bye",
    "okay thanks a lot have a good day",
    "hi this is marcus lee",
    "the booking is under priya raman",
    "um i'd like to schedule a battery replacement on the twenty first",
    "hello is this riverside auto care",
    "are wiper blades available please",
    "i'm free on june third in the afternoon",
)

TEST_VOICES: Final = ("m3", "f2")
_PAD_MS: Final = 150


def phone_line(text: str, synthesizer: EspeakSynthesizer) -> bytes:
    """``text`` as a caller's audio reaches us: 8 kHz, G.711 mu-law encoded and decoded, with the short
    silences a VAD leaves around an utterance."""
    return phone_path(synthesizer.synthesize_8k(text))


def phone_path(speech: bytes) -> bytes:
    """8 kHz PCM16 `speech` as it reaches us (see `phone_line`)."""
    pad = bytes(_PAD_MS * 8 * 2)
    return audioop.ulaw2lin(audioop.lin2ulaw(pad + speech + pad, 2), 2)


@pytest.fixture(scope="session")
def demo_vocabulary() -> DomainVocabulary:
    return DEMO_VOCABULARY


@pytest.fixture(scope="session")
def speech_model(tmp_path_factory: pytest.TempPathFactory) -> SpeechModel:
    return SpeechModel.build(DEMO_VOCABULARY, tmp_path_factory.mktemp("speech-model"))


@pytest.fixture(scope="session")
def voices() -> Iterator[dict[str, EspeakSynthesizer]]:
    yield {variant: EspeakSynthesizer(variant=variant) for variant in TEST_VOICES}
