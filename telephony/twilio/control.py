"""Call control through Twilio's REST API (the SDK's `Client`): hang up, transfer, place outbound calls.

Synchronous on purpose: the SDK's default HTTP client is `requests`, and the callers are worker threads
(the agent's executor, the dialer's Celery tasks). Every SDK or network exception is translated here into
our own small hierarchy, split by fault, so callers never handle vendor types:

- `CallControlRejected`: Twilio answered 4xx (bad number, unknown or finished call, auth): retrying the
  same request will not help;
- `CallControlUnavailable`: 5xx, timeout or no connection: retrying later may.

The HTTP client is the SDK's own seam (`twilio.http.HttpClient`); tests pass a `TwilioHttpClient` subclass
that sends the same requests to a local server implementing the documented endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import requests
from twilio.base.exceptions import TwilioException  # type: ignore[import-untyped]
from twilio.http import HttpClient  # type: ignore[import-untyped]
from twilio.http.http_client import TwilioHttpClient  # type: ignore[import-untyped]
from twilio.rest import Client  # type: ignore[import-untyped]

from telephony.twilio.twiml import TransferTarget, stream_twiml, transfer_twiml

__all__ = [
    "DEFAULT_STATUS_EVENTS",
    "CallControlError",
    "CallControlRejected",
    "CallControlUnavailable",
    "CallSnapshot",
    "MachineDetection",
    "OutboundCallOptions",
    "TwilioCallControl",
]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0  # the SDK's default is to wait forever
# The call progress events Twilio can report to a status callback (StatusCallbackEvent).
DEFAULT_STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")


class CallControlError(Exception):
    """A call-control request did not do what was asked."""


class CallControlRejected(CallControlError):
    """Twilio refused the request (4xx): wrong parameters, unknown or already finished call, bad auth."""

    def __init__(self, message: str, *, status: int, code: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # Twilio's error code, e.g. 21220 "call is not in-progress"


class CallControlUnavailable(CallControlError):
    """Twilio could not be reached or failed (5xx, timeout, connection refused): try again later."""


MachineDetection = Literal["Enable", "DetectMessageEnd"]


@dataclass(frozen=True, slots=True)
class OutboundCallOptions:
    """Options of `calls.create` besides the TwiML (names as in the REST API's Call resource)."""

    status_callback: str | None = None  # usually https://PUBLIC/twilio/status
    status_callback_events: Sequence[str] = DEFAULT_STATUS_EVENTS
    machine_detection: MachineDetection | None = None
    machine_detection_timeout_s: int | None = None
    async_amd: bool = False  # detect in the background instead of delaying the TwiML
    async_amd_status_callback: str | None = None
    ring_timeout_s: int | None = None  # `Timeout`: how long to let the phone ring
    time_limit_s: int | None = None  # `TimeLimit`: longest the call may last


@dataclass(frozen=True, slots=True)
class CallSnapshot:
    """The Call resource as Twilio returned it after a request."""

    sid: str
    status: str | None
    direction: str | None
    from_number: str | None
    to: str | None
    answered_by: str | None


def _snapshot(call: Any) -> CallSnapshot:
    return CallSnapshot(
        sid=str(call.sid),
        status=call.status,
        direction=call.direction,
        from_number=call._from,
        to=call.to,
        answered_by=call.answered_by,
    )


class TwilioCallControl:
    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        http_client: HttpClient | None = None,
        region: str | None = None,
        edge: str | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio call control needs an account SID and an auth token")
        self._client = Client(
            account_sid,
            auth_token,
            http_client=http_client or TwilioHttpClient(timeout=REQUEST_TIMEOUT_S),
            region=region,
            edge=edge,
        )

    def hangup(self, call_sid: str) -> CallSnapshot:
        """End a live call (`Status=completed`; a call still ringing is cancelled by Twilio)."""
        return self._update(call_sid, status="completed")

    def transfer(
        self, call_sid: str, target: TransferTarget, *, announcement: str | None = None
    ) -> CallSnapshot:
        """Switch a live call to new TwiML that connects it to a human.

        The new TwiML replaces `<Connect><Stream>`: Twilio ends the media stream (`stop`, socket closed)
        and the caller stays on the line with whoever picks up.
        """
        return self._update(call_sid, twiml=transfer_twiml(target, announcement=announcement))

    def place_call(
        self,
        to: str,
        from_number: str,
        *,
        stream_url: str,
        parameters: Mapping[str, str] | None = None,
        options: OutboundCallOptions = OutboundCallOptions(),
    ) -> CallSnapshot:
        """Dial `to`; when answered, the call streams to `stream_url` and the agent talks to it."""
        arguments: dict[str, Any] = {
            "to": to,
            "from_": from_number,
            "twiml": stream_twiml(stream_url, parameters or {}),
        }
        if options.status_callback:
            arguments["status_callback"] = options.status_callback
            arguments["status_callback_event"] = list(options.status_callback_events)
            arguments["status_callback_method"] = "POST"
        if options.machine_detection:
            arguments["machine_detection"] = options.machine_detection
            if options.machine_detection_timeout_s is not None:
                arguments["machine_detection_timeout"] = options.machine_detection_timeout_s
            if options.async_amd:
                arguments["async_amd"] = "true"
                if options.async_amd_status_callback:
                    arguments["async_amd_status_callback"] = options.async_amd_status_callback
                    arguments["async_amd_status_callback_method"] = "POST"
        if options.ring_timeout_s is not None:
            arguments["timeout"] = options.ring_timeout_s
        if options.time_limit_s is not None:
            arguments["time_limit"] = options.time_limit_s
        try:
            call = self._client.calls.create(**arguments)
        except (TwilioException, requests.RequestException) as exc:
            raise _translate(exc, f"placing a call to {to}") from exc
        return _snapshot(call)

    def _update(self, call_sid: str, **changes: str) -> CallSnapshot:
        try:
            call = self._client.calls(call_sid).update(**changes)
        except (TwilioException, requests.RequestException) as exc:
            raise _translate(exc, f"updating call {call_sid}") from exc
        return _snapshot(call)


def _translate(exc: Exception, doing: str) -> CallControlError:
    status = getattr(exc, "status", None)
    if isinstance(exc, TwilioException) and isinstance(status, int):
        code = getattr(exc, "code", None)
        detail = getattr(exc, "msg", None) or getattr(exc, "detail", None) or str(exc)
        message = f"Twilio answered {status} {doing}: {detail}"
        if status >= 500:
            return CallControlUnavailable(message)
        return CallControlRejected(message, status=status, code=code if isinstance(code, int) else None)
    if isinstance(exc, requests.RequestException):
        return CallControlUnavailable(f"Twilio unreachable {doing}: {exc}")
    return CallControlError(f"Twilio request failed {doing}: {exc}")
