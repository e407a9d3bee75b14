"""Admission policy with a fake clock: allowlist, scanner blocking, per-source rate limits."""

from __future__ import annotations

import pytest

from telephony.sip.admission import AdmissionPolicy, Admitted, Dropped, Refused
from telephony.sip.message import SipRequest, parse_message
from tests.telephony.sip_samples import load_sip


def options(user_agent: str | None = None, display: str = "") -> SipRequest:
    message = parse_message(load_sip("options_keepalive.txt"))
    assert isinstance(message, SipRequest)
    if user_agent is not None:
        message.headers.set("User-Agent", user_agent)
    if display:
        message.headers.set("From", f'"{display}" <sip:100@192.0.2.1>;tag=x')
    return message


def test_allowlist_admits_listed_networks_and_refuses_the_rest() -> None:
    policy = AdmissionPolicy(allowlist=["203.0.113.0/24", "2001:db8::/32", "192.0.2.7"])
    assert policy.check(options(), "203.0.113.44", 0.0) == Admitted()
    assert policy.check(options(), "2001:db8::5", 0.0) == Admitted()
    assert policy.check(options(), "192.0.2.7", 0.0) == Admitted()
    assert policy.check(options(), "192.0.2.8", 0.0) == Refused(403, "Forbidden")
    assert policy.refused_sources == 1
    with pytest.raises(ValueError):
        AdmissionPolicy(allowlist=["not-a-network"])


@pytest.mark.parametrize(
    ("user_agent", "display"),
    [("friendly-scanner", ""), ("sipvicious 0.3.4", ""), ("VaxSIPUserAgent/3.1", ""), (None, "sipvicious")],
)
def test_scanners_are_dropped_and_their_source_blocked_for_a_while(
    user_agent: str | None, display: str
) -> None:
    policy = AdmissionPolicy(scanner_block_s=60.0)
    assert isinstance(policy.check(options(user_agent, display), "198.51.100.9", 10.0), Dropped)
    assert policy.blocked("198.51.100.9", 69.9)
    assert not policy.blocked("198.51.100.10", 20.0)
    assert not policy.blocked("198.51.100.9", 70.0)  # the block expires
    assert policy.check(options("Zoiper rv2.10"), "198.51.100.9", 70.0) == Admitted()


def test_request_floods_are_dropped_past_the_burst_and_refill() -> None:
    policy = AdmissionPolicy(requests_per_s=10.0, burst=20.0)
    verdicts = [policy.check(options(), "192.0.2.50", 0.0) for _ in range(25)]
    assert verdicts.count(Admitted()) == 20 and policy.dropped_flood == 5
    assert policy.check(options(), "192.0.2.51", 0.0) == Admitted()  # per source
    assert policy.check(options(), "192.0.2.50", 0.5) == Admitted()  # 5 tokens back after 0.5 s


def test_listed_trunks_are_never_rate_limited() -> None:
    policy = AdmissionPolicy(allowlist=["203.0.113.0/24"], requests_per_s=1.0, burst=1.0)
    assert all(policy.check(options(), "203.0.113.1", 0.0) == Admitted() for _ in range(100))
