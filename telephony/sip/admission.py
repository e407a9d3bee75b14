"""Who may talk to the user agent at all, sans-IO: source-IP allowlist, scanner blocking, request rate limits.

Internet-facing SIP ports are probed all day by scanners (SIPVicious's "friendly-scanner" and friends)
that enumerate extensions and brute-force passwords. Answering them costs CPU and confirms we exist, so
their requests are dropped without a response and their source address is ignored for a while. Any other
source gets a token bucket for new requests; past it, requests are dropped too (a 503 would only invite a
retry). The allowlist, when configured, answers 403 to every request from outside it (trunks only).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from telephony.sip.message import SipRequest

# Lowercased substrings of User-Agent / From display names that only attack tools send.
KNOWN_SCANNERS = (
    "friendly-scanner",  # SIPVicious svmap/svwar/svcrack
    "sipvicious",
    "svwar",
    "svcrack",
    "sipcli",
    "vaxsipuseragent",
    "sip-scan",
    "sipscan",
    "iwar",
    "sundayddr",
    "pplsip",
    "smap",
    "sivus",
)

_MAX_TRACKED_SOURCES = 10_000


@dataclass(frozen=True, slots=True)
class Admitted:
    pass


@dataclass(frozen=True, slots=True)
class Refused:
    """Answer the request with this status."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """Say nothing: no response, no transaction."""

    reason: str


AdmissionVerdict = Admitted | Refused | Dropped


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class AdmissionPolicy:
    def __init__(
        self,
        *,
        allowlist: Sequence[str] = (),
        scanners: Sequence[str] = KNOWN_SCANNERS,
        scanner_block_s: float = 600.0,
        requests_per_s: float = 100.0,
        burst: float = 400.0,
    ) -> None:
        # Raises ValueError for a malformed CIDR: configuration errors surface at start-up.
        self.allowlist = tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in allowlist)
        self.scanners = tuple(name.lower() for name in scanners)
        self.scanner_block_s = scanner_block_s
        self.requests_per_s = requests_per_s
        self.burst = burst
        self._blocked: dict[str, float] = {}  # source IP -> blocked until
        self._buckets: dict[str, _Bucket] = {}
        self.dropped_scanners = 0
        self.dropped_flood = 0
        self.refused_sources = 0

    def blocked(self, source_ip: str, now: float) -> bool:
        """Cheap pre-parse check: is this source currently ignored?"""
        until = self._blocked.get(source_ip)
        if until is None:
            return False
        if until <= now:
            del self._blocked[source_ip]
            return False
        return True

    def allowed_source(self, source_ip: str) -> bool:
        if not self.allowlist:
            return True
        try:
            address = ipaddress.ip_address(source_ip)
        except ValueError:
            return False
        return any(address in network for network in self.allowlist)

    def is_scanner(self, request: SipRequest) -> bool:
        agent = (request.headers.get("User-Agent") or "").lower()
        sender = (request.headers.get("From") or "").lower()
        return any(name in agent or name in sender for name in self.scanners)

    def check(self, request: SipRequest, source_ip: str, now: float) -> AdmissionVerdict:
        """The verdict for a new request (retransmissions never get here: the transaction absorbs them)."""
        if self.is_scanner(request):
            self.dropped_scanners += 1
            self._block(source_ip, now)
            return Dropped("known scanner")
        if self.allowlist:
            # A listed trunk carries every call of a carrier: it is never rate-limited.
            if self.allowed_source(source_ip):
                return Admitted()
            self.refused_sources += 1
            if not self._take_token(source_ip, now):
                self.dropped_flood += 1
                return Dropped("request rate exceeded")
            return Refused(403, "Forbidden")
        if not self._take_token(source_ip, now):
            self.dropped_flood += 1
            return Dropped("request rate exceeded")
        return Admitted()

    def _block(self, source_ip: str, now: float) -> None:
        if len(self._blocked) >= _MAX_TRACKED_SOURCES:
            for ip in [ip for ip, until in self._blocked.items() if until <= now]:
                del self._blocked[ip]
            if len(self._blocked) >= _MAX_TRACKED_SOURCES:
                return  # a spoofed-source flood must not grow this table without bound
        self._blocked[source_ip] = now + self.scanner_block_s

    def _take_token(self, source_ip: str, now: float) -> bool:
        bucket = self._buckets.get(source_ip)
        if bucket is None:
            if len(self._buckets) >= _MAX_TRACKED_SOURCES:
                # Forget full buckets: a source that has been idle long enough to refill loses nothing.
                full_after = self.burst / self.requests_per_s
                for ip in [ip for ip, b in self._buckets.items() if now - b.updated >= full_after]:
                    del self._buckets[ip]
            bucket = self._buckets[source_ip] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.requests_per_s)
        bucket.updated = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True
