"""The TwiML documents we hand Twilio, built with the SDK's `VoiceResponse` (so escaping is its job).

- `stream_twiml`: `<Connect><Stream url>` with `<Parameter>`s. `<Connect>` makes the stream
  bidirectional (we can send media, mark and clear), and nothing follows it: when we close the WebSocket
  the `<Connect>` verb ends, no TwiML is left, and Twilio hangs up. That is how the agent hangs up
  without a REST request. The `<Stream>` URL may not carry a query string (Twilio's rule), hence the
  `<Parameter>`s, which come back in the `start` message's `customParameters`.
- `transfer_twiml`: what a live call is switched to when the agent hands it to a human: `<Dial>` a
  number or a SIP URI, `<Dial><Queue>` (join the first call waiting in a queue, e.g. agents who enqueued
  themselves) or `<Enqueue>` (wait, with hold music, until a human dequeues the caller).
- `over_capacity_twiml`: a polite `<Say>` and `<Hangup/>`, or `<Dial>` to an overflow number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from twilio.twiml.voice_response import VoiceResponse  # type: ignore[import-untyped]

__all__ = [
    "DialNumber",
    "DialQueue",
    "DialSip",
    "EnqueueCaller",
    "TransferTarget",
    "over_capacity_twiml",
    "stream_twiml",
    "transfer_twiml",
]

CALLER_PARAMETER = "caller"  # the caller's number (Twilio `From`)
CALLED_PARAMETER = "called"  # the number the caller dialled (Twilio `To`)
CALL_SID_PARAMETER = "callSid"  # the call as the webhook saw it (the `start` message carries it too)


@dataclass(frozen=True, slots=True)
class DialNumber:
    number: str  # E.164
    caller_id: str | None = None  # must be a Twilio number or a verified caller id when set
    timeout_s: int | None = None


@dataclass(frozen=True, slots=True)
class DialSip:
    uri: str  # sip:agent@pbx.example.com
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class DialQueue:
    name: str


@dataclass(frozen=True, slots=True)
class EnqueueCaller:
    name: str
    wait_url: str | None = None  # TwiML played while waiting (Twilio's hold music when unset)


TransferTarget = DialNumber | DialSip | DialQueue | EnqueueCaller


def transfer_target(text: str) -> TransferTarget:
    """The transport-neutral escalation target ("sip:...", "tel:+1...", "+1...", "queue:NAME") as TwiML."""
    value = text.strip()
    if value.startswith(("sip:", "sips:")):
        return DialSip(value)
    if value.startswith("queue:"):
        return EnqueueCaller(value.removeprefix("queue:"))
    number = value.removeprefix("tel:")
    if not number.lstrip("+").isdigit():
        raise ValueError(f"not a transfer target: {text!r} (use sip:..., tel:+1..., or queue:NAME)")
    return DialNumber(number)


def stream_twiml(stream_url: str, parameters: Mapping[str, str]) -> str:
    if "?" in stream_url:
        raise ValueError("a <Stream> URL cannot carry a query string; pass <Parameter>s instead")
    response = VoiceResponse()
    connect = response.connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    return str(response)


def transfer_twiml(target: TransferTarget, *, announcement: str | None = None) -> str:
    response = VoiceResponse()
    if announcement:
        response.say(announcement)
    if isinstance(target, EnqueueCaller):
        response.enqueue(target.name, wait_url=target.wait_url)
        return str(response)
    if isinstance(target, DialNumber):
        dial = response.dial(caller_id=target.caller_id, timeout=target.timeout_s)
        dial.number(target.number)
    elif isinstance(target, DialSip):
        dial = response.dial()
        dial.sip(target.uri, username=target.username, password=target.password)
    else:
        dial = response.dial()
        dial.queue(target.name)
    return str(response)


def over_capacity_twiml(message: str, overflow_number: str | None = None) -> str:
    response = VoiceResponse()
    if overflow_number:
        response.dial(overflow_number)
        return str(response)
    response.say(message)
    response.hangup()
    return str(response)
