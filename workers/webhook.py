"""The external CRM adapter: outbox messages POSTed as signed JSON webhooks.

Each request carries
- `Idempotency-Key`: the outbox key, so the receiver can drop a redelivery (we retry after timeouts,
  and a timeout does not say whether the receiver applied the write);
- `X-Switchboard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`: the timestamp is
  signed with the body so a captured request cannot be replayed later with a fresh timestamp.

2xx (and 409, "already have it") count as delivered; 408, 425, 429 and 5xx are retried; other 4xx mean
the receiver refuses this write and it goes to the dead letters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Final

from crm.outbox import PendingMessage
from workers.delivery import DestinationUnavailable, WriteRejected

SIGNATURE_HEADER: Final = "X-Switchboard-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
_RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, now: float, tolerance_s: float = 300.0) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)


def webhook_body(message: PendingMessage) -> bytes:
    document = {
        "id": message.idempotency_key,
        "kind": message.kind,
        "created_at": message.created_at.isoformat(),
        "data": message.payload,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()


class ExternalCrmWebhook:
    """A `workers.delivery.Destination` for the external CRM."""

    def __init__(
        self, url: str, secret: str, *, timeout_s: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the CRM webhook URL must be http(s): {url!r}")
        self._url = url
        self._secret = secret.encode()
        self._timeout_s = timeout_s
        self._clock = clock

    def deliver(self, message: PendingMessage) -> None:
        body = webhook_body(message)
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                IDEMPOTENCY_HEADER: message.idempotency_key,
                SIGNATURE_HEADER: sign(self._secret, body, int(self._clock())),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
            if status == 409:
                return  # the receiver already has this key
            if status >= 500 or status in _RETRYABLE_STATUSES:
                raise DestinationUnavailable(f"external CRM answered {status}") from exc
            raise WriteRejected(f"external CRM refused the write with {status}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DestinationUnavailable(f"external CRM unreachable: {reason}") from exc
