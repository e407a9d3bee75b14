"""One SIP call as the agent sees it: dialog, media, and the transport seam (play, flush, hang up ...).

Also the pure helpers a call's in-dialog requests need: reading DTMF out of SIP INFO bodies and deciding
what a (re-)offer does to the media.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from telephony.media import RtpStream
from telephony.sdp import NegotiatedMedia, SessionDescription
from telephony.sip.auth import DigestAuthenticator
from telephony.sip.dialog import Dialog
from telephony.sip.errors import SipParseError
from telephony.sip.message import NameAddr, SipRequest, SipResponse, SipUri

if TYPE_CHECKING:
    from telephony.sip.ua import UserAgent

log = logging.getLogger(__name__)

Addr = tuple[str, int]
AudioSink = Callable[[bytes], None]
DigitSink = Callable[[str], None]

DTMF_DIGITS = frozenset("0123456789*#ABCD")
# application/dtmf-relay carries events as numbers in some PBXs (RFC 4733 event codes 10/11 = * / #).
_EVENT_NAMES = {"10": "*", "11": "#", "12": "A", "13": "B", "14": "C", "15": "D"}
HOLD_ADDRESSES = frozenset({"0.0.0.0", "::"})  # RFC 2543 hold: c=0.0.0.0 instead of a=sendonly


def _drop_audio(frame: bytes) -> None:
    """Audio that arrives before an agent is attached is not worth keeping (it is ringback-time noise)."""


def _drop_digit(digit: str) -> None:
    log.debug("DTMF %s before the agent was attached", digit)


def dtmf_from_info(request: SipRequest) -> str | None:
    """The digit in an INFO body (application/dtmf-relay 'Signal=5' or application/dtmf '5').

    None for an empty INFO (a keep-alive); SipParseError(415) for other content types, (400) for junk.
    """
    if not request.body.strip():
        return None
    content_type = (request.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    try:
        text = request.body.decode("ascii")
    except UnicodeDecodeError:
        raise SipParseError(400, "DTMF body is not ASCII") from None
    if content_type == "application/dtmf-relay":
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                return _digit(value.strip())
        raise SipParseError(400, "dtmf-relay body without Signal")
    if content_type == "application/dtmf":
        return _digit(text.strip())
    raise SipParseError(415, "Unsupported Media Type")


def _digit(value: str) -> str:
    digit = _EVENT_NAMES.get(value, value.upper())
    if digit not in DTMF_DIGITS:
        raise SipParseError(400, "Not a DTMF digit")
    return digit


def allowed_methods(message: SipRequest | SipResponse) -> frozenset[str] | None:
    """The methods the sender lists in Allow (RFC 3261 20.5); None when it sent no Allow at all."""
    if "Allow" not in message.headers:
        return None
    return frozenset(method.upper() for method in message.headers.get_all("Allow"))


class CallFailed(Exception):
    """An outgoing request did not succeed (final non-2xx response, or no response at all)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class TransferState:
    """A REFER we sent, waiting for the transferee's NOTIFY with a final sipfrag."""

    result: asyncio.Future[bool]


@dataclass(slots=True, eq=False)
class SipCall:
    """One call's dialog and media; also the audio transport the agent session talks to."""

    call_id: str
    direction: str  # "inbound" | "outbound"
    dialog: Dialog
    peer_addr: Addr  # where its signalling goes: the address the peer really sends from (symmetric, NAT)
    transport: str  # "UDP" | "TCP" | "TLS"
    negotiated: NegotiatedMedia
    media: RtpStream
    local_sdp: bytes
    invite_cseq: int
    media_port: int = 0
    session_id: int = 0
    sdp_version: int = 1
    state: str = "early"  # early | confirmed | terminated
    hangup_by: str | None = None  # "caller" | "agent" (inbound), "callee" | "caller" (outbound)
    end_reason: str | None = None  # "bye", "transfer", "rtp-timeout", "session-expired", "no-ack", ...
    started_at: float = field(default_factory=time.time)
    audio_sink: AudioSink = _drop_audio
    dtmf_sink: DigitSink = _drop_digit
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    agent: UserAgent | None = None
    # Our SDP offer when the peer still owes the answer (late offer: it comes in the ACK), and the CSeq
    # number of the INVITE whose 2xx carried it: only that INVITE's ACK brings the answer.
    pending_offer: SessionDescription | None = None
    pending_offer_cseq: int = 0
    transfer_state: TransferState | None = None
    ack: bytes = b""  # the ACK we sent for the latest 2xx to our INVITE, re-sent if that 2xx comes again
    ack_cseq: int = 0  # the CSeq number of that INVITE
    reinvite_pending: bool = False  # our own re-INVITE (a session refresh) waits for its final response
    authenticator: DigestAuthenticator | None = None  # outbound through a trunk: BYE may be challenged too
    # What the peer's latest INVITE, re-INVITE, UPDATE or 2xx listed in Allow (RFC 3261 20.5): our session
    # refreshes use UPDATE only with a peer known to take it (RFC 4028 7.4), re-INVITE otherwise.
    peer_allow: frozenset[str] = frozenset()

    def note_allow(self, message: SipRequest | SipResponse) -> None:
        """Remember the peer's Allow from a message it sent in this dialog; one without Allow says nothing."""
        allowed = allowed_methods(message)
        if allowed is not None:
            self.peer_allow = allowed

    @property
    def owns_call_id(self) -> bool:
        """Whether we generated the dialog's Call-ID (our outbound INVITE created it): RFC 3261 14.1."""
        return self.direction == "outbound"

    # --- dialog fields, kept under their old names -------------------------------------------------------
    @property
    def local_tag(self) -> str:
        return self.dialog.local_tag

    @property
    def remote_tag(self) -> str:
        return self.dialog.remote_tag

    @property
    def local_uri(self) -> str:
        return self.dialog.local_uri

    @property
    def remote_uri(self) -> str:
        return self.dialog.remote_uri

    @property
    def remote_target(self) -> str:
        return self.dialog.remote_target

    @property
    def route_set(self) -> list[str]:
        return self.dialog.route_set

    @property
    def remote_number(self) -> str | None:
        """The user part of the remote party's URI: the caller's number on inbound calls."""
        try:
            return SipUri.parse(NameAddr.parse(self.remote_uri).uri).user
        except SipParseError:
            return None

    # --- the transport seam for the agent loop ---------------------------------------------------------
    def play(self, pcm16: bytes) -> None:
        self.media.play(pcm16)

    def flush(self) -> int:
        return self.media.flush()

    async def wait_drained(self) -> None:
        await self.media.wait_drained()

    @property
    def frames_played(self) -> int:
        return self.media.frames_played

    async def hangup(self) -> None:
        if self.agent is not None:
            await self.agent.send_bye(self)

    async def transfer(self, target: str) -> bool:
        """Blind transfer (REFER): True once the transferee reached `target`; our leg is then ended."""
        if self.agent is None:
            return False
        return await self.agent.transfer(self, target)

    def send_dtmf(self, digit: str) -> None:
        """An RFC 4733 digit towards the peer."""
        self.media.send_dtmf(digit)

    def deliver_audio(self, frame: bytes) -> None:
        self.audio_sink(frame)

    def deliver_dtmf(self, digit: str) -> None:
        self.dtmf_sink(digit)
