"""Caller numbers to E.164, whatever shape they arrive in (dialled digits, SIP URIs, Twilio's From)."""

from __future__ import annotations

import phonenumbers

from tools.api import InvalidRequest

DEFAULT_REGION = "US"
_URI_SCHEMES = ("sips:", "sip:", "tel:")


def _dialled_part(raw: str) -> str:
    """The user part of `sip:+15550100002@host;user=phone` / `tel:+1555...;ext=1`, or `raw` itself."""
    text = raw.strip().strip("<>")
    lowered = text.lower()
    for scheme in _URI_SCHEMES:
        if lowered.startswith(scheme):
            text = text[len(scheme) :]
            break
    return text.split("@", 1)[0].split(";", 1)[0]


def to_e164(raw: str, region: str = DEFAULT_REGION) -> str:
    """E.164 form of a phone number; `InvalidRequest` when it cannot be a full number.

    We test "possible" (right length for the country), not "valid" (assigned range): the 555-01xx
    numbers used in demos and tests are reserved and would fail validity, and a new real range must
    not lock callers out.
    """
    dialled = _dialled_part(raw)
    try:
        number = phonenumbers.parse(dialled, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidRequest(f"not a phone number: {raw!r}") from exc
    # IS_POSSIBLE_LOCAL_ONLY (7 digits in the US) lacks an area code, so it names no single line.
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidRequest(f"not a complete phone number: {raw!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
