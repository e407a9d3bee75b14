"""SIP digest authentication (RFC 3261 section 22, RFC 8760, RFC 7616; RFC 2617/2069 compatibility). No I/O.

Client side: `DigestAuthenticator.authorize(request, challenge_response)` turns a 401/407 into the retried
request. Server side: `DigestChallenge` renders a challenge and `verify_digest` checks the answer, which is
what a registrar in a test (or a future inbound-auth feature) needs.

Supported algorithms: MD5, SHA-256 and SHA-512-256, each also as "-sess"; qop "auth", "auth-int", or absent
(the RFC 2069 form many PBXs still send). Where a response carries several challenges for one realm, the
strongest supported algorithm wins (an RFC 8760 server lists SHA-256 and MD5 side by side for old clients).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from telephony.sip.address import TOKEN_RE, Via
from telephony.sip.errors import SipParseError, SipUsageError
from telephony.sip.message import Headers, SipRequest, SipResponse, generate_branch, parse_cseq

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "Credentials",
    "DigestAuthenticator",
    "DigestAuthorization",
    "DigestChallenge",
    "digest_response",
    "verify_digest",
]

# name -> (hashlib name, session variant, strength rank: higher wins when a realm offers several).
# SHA-512/256 comes from OpenSSL, so a build without it simply does not offer that algorithm.
_ALGORITHMS: dict[str, tuple[str, bool, int]] = {
    name.upper(): (hash_name, name.endswith("-sess"), rank)
    for name, hash_name, rank in (
        ("MD5", "md5", 1),
        ("MD5-sess", "md5", 1),
        ("SHA-256", "sha256", 2),
        ("SHA-256-sess", "sha256", 2),
        ("SHA-512-256", "sha512_256", 3),
        ("SHA-512-256-sess", "sha512_256", 3),
    )
    if hash_name in hashlib.algorithms_available
}
SUPPORTED_ALGORITHMS = tuple(
    name
    for name in ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess")
    if name.upper() in _ALGORITHMS
)

# A server that keeps answering stale=true would otherwise keep us resending forever.
_MAX_STALE_RETRIES = 3
# Requests sent with cached credentials are remembered only until their answer could have arrived.
_PREAUTHORIZED_MEMORY = 64
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_NC_RE = re.compile(r"[0-9a-fA-F]{8}")


# --------------------------------------------------------------------------------------------------------
# The auth-param grammar shared by challenges and credentials (RFC 3261 section 25.1, RFC 7235 2.1)


def _parse_auth_params(value: str, what: str) -> tuple[str, dict[str, str]]:
    """'Digest a=b, c="d, e"' -> ('digest', {'a': 'b', 'c': 'd, e'}); SipParseError(400) when malformed."""
    text = value.strip()
    scheme_match = TOKEN_RE.match(text)
    if scheme_match is None:
        raise SipParseError(400, f"Malformed {what}: no scheme")
    scheme = scheme_match.group(0).lower()
    position = scheme_match.end()
    params: dict[str, str] = {}
    length = len(text)
    expect_comma = False
    while True:
        while position < length and text[position] in " \t":
            position += 1
        if position >= length:
            break
        if expect_comma:
            if text[position] != ",":
                raise SipParseError(400, f"Malformed {what}: expected ','")
            position += 1
            expect_comma = False
            continue
        if text[position] == ",":  # empty list elements are allowed (RFC 7230 section 7)
            position += 1
            continue
        name_match = TOKEN_RE.match(text, position)
        if name_match is None:
            raise SipParseError(400, f"Malformed {what}: bad parameter name")
        name = name_match.group(0).lower()
        position = name_match.end()
        while position < length and text[position] in " \t":
            position += 1
        if position >= length or text[position] != "=":
            raise SipParseError(400, f"Malformed {what}: parameter {name} has no value")
        position += 1
        while position < length and text[position] in " \t":
            position += 1
        if position < length and text[position] == '"':
            chars: list[str] = []
            position += 1
            while True:
                if position >= length:
                    raise SipParseError(400, f"Malformed {what}: unterminated quoted string")
                char = text[position]
                if char == "\\" and position + 1 < length:
                    chars.append(text[position + 1])
                    position += 2
                    continue
                position += 1
                if char == '"':
                    break
                chars.append(char)
            param_value = "".join(chars)
        else:
            value_match = TOKEN_RE.match(text, position)
            if value_match is None:
                raise SipParseError(400, f"Malformed {what}: bad value for {name}")
            param_value = value_match.group(0)
            position = value_match.end()
        if name in params:
            raise SipParseError(400, f"Malformed {what}: duplicate parameter {name}")
        params[name] = param_value
        expect_comma = True
    return scheme, params


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _algorithm_key(algorithm: str) -> str:
    return algorithm.upper()


def _hasher(algorithm: str) -> tuple[str, bool]:
    entry = _ALGORITHMS.get(_algorithm_key(algorithm))
    if entry is None:
        raise SipUsageError(f"unsupported digest algorithm {algorithm!r}")
    return entry[0], entry[1]


# --------------------------------------------------------------------------------------------------------
# Wire structures


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password; `realm` None answers any realm, otherwise only that one."""

    username: str
    password: str = field(repr=False)
    realm: str | None = None


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """One WWW-Authenticate / Proxy-Authenticate value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, header_value: str) -> DigestChallenge:
        scheme, params = _parse_auth_params(header_value, "digest challenge")
        if scheme != "digest":
            raise SipParseError(400, f"Unsupported authentication scheme {scheme}")
        realm, nonce = params.get("realm"), params.get("nonce")
        if realm is None or nonce is None:
            raise SipParseError(400, "Digest challenge without realm or nonce")
        qop = tuple(item.strip().lower() for item in params.get("qop", "").split(",") if item.strip())
        return cls(
            realm=realm,
            nonce=nonce,
            algorithm=params.get("algorithm", "MD5"),
            qop=qop,
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
        )

    @property
    def supported(self) -> bool:
        """Whether this client can answer: a known algorithm, a usable qop, and -sess only with a qop."""
        entry = _ALGORITHMS.get(_algorithm_key(self.algorithm))
        if entry is None:
            return False
        if self.qop and not {"auth", "auth-int"} & set(self.qop):
            return False
        # -sess hashes the cnonce into A1, but without qop there is no cnonce to send (RFC 2617 3.2.2).
        return not (entry[1] and not self.qop)

    @property
    def strength(self) -> int:
        entry = _ALGORITHMS.get(_algorithm_key(self.algorithm))
        return entry[2] if entry is not None else 0

    def __str__(self) -> str:
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}", f"algorithm={self.algorithm}"]
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class DigestAuthorization:
    """One Authorization / Proxy-Authorization value (the client's answer to a challenge)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, header_value: str) -> DigestAuthorization:
        scheme, params = _parse_auth_params(header_value, "digest credentials")
        if scheme != "digest":
            raise SipParseError(400, f"Unsupported authentication scheme {scheme}")
        missing = [name for name in ("username", "realm", "nonce", "uri", "response") if name not in params]
        if missing:
            raise SipParseError(400, f"Digest credentials without {missing[0]}")
        qop = params.get("qop")
        nc, cnonce = params.get("nc"), params.get("cnonce")
        if qop is not None and (nc is None or cnonce is None or not _NC_RE.fullmatch(nc)):
            raise SipParseError(400, "Digest credentials with qop need nc and cnonce")
        if not _HEX_RE.fullmatch(params["response"]):
            raise SipParseError(400, "Digest response is not hexadecimal")
        return cls(
            username=params["username"],
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=params["response"].lower(),
            algorithm=params.get("algorithm"),
            qop=qop.lower() if qop is not None else None,
            nc=nc,
            cnonce=cnonce,
            opaque=params.get("opaque"),
        )

    def __str__(self) -> str:
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
        ]
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        # qop and nc are tokens, unquoted: some servers (old Asterisk) reject qop="auth".
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        return "Digest " + ", ".join(parts)


# --------------------------------------------------------------------------------------------------------
# The hash chain


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The `response` value of RFC 7616 section 3.4.1 (with qop) or RFC 2069 (qop None), lowercase hex."""
    name, session = _hasher(algorithm)

    def hash_text(text: str) -> str:
        return hashlib.new(name, text.encode("utf-8")).hexdigest()

    a1 = hash_text(f"{username}:{realm}:{password}")
    if session:
        if cnonce is None:
            raise SipUsageError(f"{algorithm} needs a cnonce")
        a1 = hash_text(f"{a1}:{nonce}:{cnonce}")
    if qop == "auth-int":
        a2 = hash_text(f"{method}:{uri}:{hashlib.new(name, body).hexdigest()}")
    else:
        a2 = hash_text(f"{method}:{uri}")
    if qop is None:
        return hash_text(f"{a1}:{nonce}:{a2}")
    if qop not in ("auth", "auth-int") or nc is None or cnonce is None:
        raise SipUsageError(f"qop {qop!r} needs nc and cnonce")
    return hash_text(f"{a1}:{nonce}:{nc}:{cnonce}:{qop}:{a2}")


def verify_digest(
    request_method: str,
    uri: str,
    authorization_header_value: str,
    password: str,
    *,
    username: str | None = None,
    realm: str | None = None,
    nonce: str | None = None,
    opaque: str | None = None,
    algorithm: str | None = None,
    require_qop: bool = False,
    body: bytes = b"",
) -> bool:
    """Server side: does this Authorization value prove knowledge of `password` for this request?

    `uri` is the Request-URI; RFC 3261 section 22.4 requires the digest-uri to be the same, otherwise a
    captured answer could be replayed against another resource. The keyword arguments, when given, pin
    what the server issued (its realm, nonce, opaque, algorithm) and the expected user; `require_qop`
    refuses the RFC 2069 form, so an answer cannot downgrade a challenge that offered qop. Malformed
    input is False. Nonce-count replay tracking is the caller's business: it knows which nonces it
    issued and when.
    """
    try:
        answer = DigestAuthorization.parse(authorization_header_value)
    except SipParseError:
        return False
    used_algorithm = answer.algorithm or "MD5"
    if _algorithm_key(used_algorithm) not in _ALGORITHMS or answer.uri != uri:
        return False
    for expected, actual in ((username, answer.username), (realm, answer.realm), (nonce, answer.nonce)):
        if expected is not None and expected != actual:
            return False
    if opaque is not None and answer.opaque != opaque:
        return False
    if algorithm is not None and _algorithm_key(algorithm) != _algorithm_key(answer.algorithm or "MD5"):
        return False
    if require_qop and answer.qop is None:
        return False
    if answer.qop not in (None, "auth", "auth-int") or (_hasher(used_algorithm)[1] and answer.cnonce is None):
        return False
    expected_response = digest_response(
        algorithm=used_algorithm,
        username=answer.username,
        realm=answer.realm,
        password=password,
        method=request_method,
        uri=answer.uri,
        nonce=answer.nonce,
        qop=answer.qop,
        nc=answer.nc,
        cnonce=answer.cnonce,
        body=body,
    )
    return hmac.compare_digest(expected_response, answer.response)


# --------------------------------------------------------------------------------------------------------
# Client


def _new_cnonce() -> str:
    return secrets.token_hex(16)


@dataclass(slots=True)
class _NonceUse:
    challenge: DigestChallenge
    count: int = 0  # nonce-count already used with this nonce (RFC 7616 section 3.4: nc)


def _header_names(status: int) -> tuple[str, str] | None:
    if status == 401:
        return "WWW-Authenticate", "Authorization"
    if status == 407:
        return "Proxy-Authenticate", "Proxy-Authorization"
    return None


def _realm_of(value: str) -> str | None:
    try:
        return DigestAuthorization.parse(value).realm
    except SipParseError:
        return None


def _with_new_branch(via_value: str) -> str:
    via = Via.parse(via_value)
    return str(Via(via.transport, via.host, via.port, {**via.params, "branch": generate_branch()}))


class DigestAuthenticator:
    """Client-side digest state for one set of credentials: nonce-counts per nonce and loop protection.

    One instance per trunk or registration; it remembers the last challenge of each realm so that
    `preauthorize` can answer it again (nc + 1) on the next request without another 401 round trip.
    """

    def __init__(self, credentials: Credentials, *, cnonce_factory: Callable[[], str] = _new_cnonce) -> None:
        self.credentials = credentials
        self._cnonce_factory = cnonce_factory
        self._nonces: dict[tuple[str, str], _NonceUse] = {}  # (credentials header, realm) -> latest
        # (Call-ID, CSeq) of requests sent with cached credentials; a dict keeps insertion order for trimming
        self._preauthorized: dict[tuple[str, int], None] = {}
        self._stale_retries: dict[str, int] = {}

    def _answer(self, request: SipRequest, header: str, challenge: DigestChallenge) -> str:
        use = self._nonces.get((header, challenge.realm))
        if use is None or use.challenge.nonce != challenge.nonce:
            use = _NonceUse(challenge)
        use.challenge = challenge
        use.count += 1
        self._nonces[(header, challenge.realm)] = use
        qop = "auth" if "auth" in challenge.qop else ("auth-int" if challenge.qop else None)
        nc = f"{use.count:08x}" if qop is not None else None
        cnonce = self._cnonce_factory() if qop is not None else None
        response = digest_response(
            algorithm=challenge.algorithm,
            username=self.credentials.username,
            realm=challenge.realm,
            password=self.credentials.password,
            method=request.method,
            uri=request.uri,
            nonce=challenge.nonce,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            body=request.body,
        )
        answer = DigestAuthorization(
            username=self.credentials.username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=request.uri,
            response=response,
            algorithm=challenge.algorithm,
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            opaque=challenge.opaque,
        )
        return str(answer)

    def _choose(self, values: list[str]) -> dict[str, DigestChallenge | None]:
        """realm -> the strongest supported challenge (first listed on ties), None if none is usable."""
        chosen: dict[str, DigestChallenge | None] = {}
        for value in values:
            try:
                challenge = DigestChallenge.parse(value)
            except SipParseError:
                continue  # a Basic challenge or garbage beside a usable one is not fatal
            current = chosen.get(challenge.realm)
            if not challenge.supported:
                chosen.setdefault(challenge.realm, None)
            elif current is None or challenge.strength > current.strength:
                chosen[challenge.realm] = challenge
        return chosen

    def _may_retry(self, request: SipRequest, header: str, challenge: DigestChallenge) -> bool:
        """Loop protection (RFC 3261 section 22.2: do not resend credentials that were just rejected)."""
        realm = challenge.realm
        sent = [value for value in request.headers.get_all(header) if _realm_of(value) == realm]
        if not sent:
            self._stale_retries.pop(realm, None)
            return True
        key = (request.headers.get("Call-ID") or "", parse_cseq(request.headers["CSeq"])[0])
        if key in self._preauthorized:
            return True  # cached credentials may simply have expired: one fresh try
        if not challenge.stale:
            return False
        if any(DigestAuthorization.parse(value).nonce == challenge.nonce for value in sent):
            return False  # "stale" with the very nonce we used: the server is confused, stop
        retries = self._stale_retries.get(realm, 0) + 1
        self._stale_retries[realm] = retries
        return retries <= _MAX_STALE_RETRIES

    def authorize(self, request: SipRequest, response: SipResponse) -> SipRequest | None:
        """The request to send after `response` (401/407) challenged `request`, or None to give up.

        The new request keeps the Call-ID, takes CSeq + 1 and a new Via branch (it is a new transaction,
        RFC 3261 section 22.2) and carries one credential per challenged realm (section 22.3).
        """
        names = _header_names(response.status)
        if names is None or request.method in ("ACK", "CANCEL"):
            return None  # ACK and CANCEL cannot be challenged (section 22.1)
        challenge_header, header = names
        chosen = self._choose(response.headers.get_all(challenge_header))
        if not chosen:
            return None
        for realm, challenge in chosen.items():
            if challenge is None:
                return None
            if self.credentials.realm is not None and self.credentials.realm != realm:
                return None
        challenges = [challenge for challenge in chosen.values() if challenge is not None]
        try:
            cseq, method = parse_cseq(request.headers["CSeq"])
            allowed = all(self._may_retry(request, header, challenge) for challenge in challenges)
        except (KeyError, SipParseError) as exc:
            raise SipUsageError(f"cannot authorize a malformed request: {exc}") from None
        self._preauthorized.pop((request.headers.get("Call-ID") or "", cseq), None)
        if not allowed:
            return None
        headers = Headers()
        via_done = False
        for name, value in request.headers.items():
            if name == "Via" and not via_done:
                try:
                    value = _with_new_branch(value)
                except SipParseError as exc:
                    raise SipUsageError(f"cannot authorize a request with Via {value!r}") from exc
                via_done = True
            elif name == "CSeq":
                value = f"{cseq + 1} {method}"
            elif name.lower() == header.lower() and _realm_of(value) in chosen:
                continue
            headers.add(name, value)
        for challenge in challenges:
            headers.add(header, self._answer(request, header, challenge))
        return SipRequest(request.method, request.uri, headers, request.body)

    def preauthorize(self, request: SipRequest) -> SipRequest:
        """`request` with credentials for every realm that challenged us before (nonce reused, nc + 1).

        Returns the request unchanged when nothing is cached. If the server has dropped the nonce, its
        401/407 goes through `authorize` as usual, which allows that one retry.
        """
        if not self._nonces or request.method in ("ACK", "CANCEL"):
            return request
        try:
            cseq, _ = parse_cseq(request.headers["CSeq"])
        except (KeyError, SipParseError) as exc:
            raise SipUsageError(f"cannot authorize a malformed request: {exc}") from None
        headers = request.headers.copy()
        for (header, realm), use in list(self._nonces.items()):
            if any(_realm_of(value) == realm for value in request.headers.get_all(header)):
                continue
            headers.add(header, self._answer(request, header, use.challenge))
        self._preauthorized[(request.headers.get("Call-ID") or "", cseq)] = None
        while len(self._preauthorized) > _PREAUTHORIZED_MEMORY:
            del self._preauthorized[next(iter(self._preauthorized))]
        return SipRequest(request.method, request.uri, headers, request.body)

    def forget(self) -> None:
        """Drop cached challenges (a registrar restarted, say): the next request goes unauthenticated."""
        self._nonces.clear()
        self._preauthorized.clear()
        self._stale_retries.clear()
