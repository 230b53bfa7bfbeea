"""Authentication stage: `Authorization: Bearer <key>` to the team that owns the key.

Keys are known only as SHA-256 digests. The presented key is hashed once, looked up in a
dict built once per configuration (at start-up and at each reload), and the stored digest
is compared again with `hmac.compare_digest` so the answer does not depend on how many
leading bytes matched. A key past its `not_after` is refused like an unknown one (one
float comparison: the date was turned into epoch seconds with the dict, see
`teams.team_keys`), counted and audited as `expired_key`. Every 401 gets the same
message; the key is never logged, echoed or forwarded.

A failure is counted against the client's address (`auth_failures`), which may turn it
into a 429; once an address is blocked its requests are refused before their key is looked
up. A valid key costs no call to anyone.

Reads: the `Authorization` header, the client address (only when authentication fails, or
while some address is blocked). Writes: `team`, or `auth_failure`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from gateway.auth_failures import AuthFailure, AuthFailureLimit
from gateway.config import GatewayConfig
from gateway.errors import AuthenticationFailed
from gateway.pipeline import Exchange, Stage
from gateway.teams import FINGERPRINT_HEX, Team, TeamKey, team_keys

_BEARER = "bearer "
# Longest key worth hashing; anything longer cannot be one of ours.
_MAX_KEY_LENGTH = 512


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def presented_digest(authorization: str | None) -> bytes | None:
    """The SHA-256 of the key an `Authorization` header presents; None when it presents no
    key that could be one of ours (absent, not `Bearer`, blank or over-long)."""
    if not authorization or len(authorization) > _MAX_KEY_LENGTH + len(_BEARER):
        return None
    if authorization[: len(_BEARER)].lower() != _BEARER:
        return None
    key = authorization[len(_BEARER) :].strip()
    if not key:
        return None
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def fingerprint(digest: bytes | None) -> str | None:
    return None if digest is None else digest.hex()[:FINGERPRINT_HEX]


class Authenticator(Stage):
    name = "auth"

    def __init__(
        self,
        config: GatewayConfig,
        failures: AuthFailureLimit,
        keys: list[TeamKey] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._failures = failures
        self._clock = clock
        self._keys: dict[bytes, TeamKey] = {
            key.digest: key for key in (team_keys(config) if keys is None else keys)
        }
        self._stored = {digest: digest for digest in self._keys}

    async def enter(self, exchange: Exchange) -> None:
        http = exchange.http
        authorization = http.headers.get("Authorization")
        failures = self._failures
        if failures.blocking:
            client = failures.client(http)
            left = failures.blocked_for(client)
            if left is not None:
                digest = presented_digest(authorization)
                exchange.auth_failure = AuthFailure("blocked", client, fingerprint(digest))
                raise failures.refuse_blocked(left)
        digest = presented_digest(authorization)
        key = self.key_of(digest)
        if key is not None and not self._expired(key):
            exchange.team = key.team
            return
        if key is not None:
            reason = "expired_key"
        elif digest is not None:
            reason = "unknown_key"
        else:
            reason = "missing" if not authorization else "malformed"
        failure = AuthFailure(reason, failures.client(http), fingerprint(digest))
        exchange.auth_failure = failure
        raise await failures.failed(failure) or _denied()

    def key_of(self, digest: bytes | None) -> TeamKey | None:
        """The configured key with this digest, expired or not."""
        stored = None if digest is None else self._stored.get(digest)
        if stored is None or digest is None or not hmac.compare_digest(stored, digest):
            return None
        return self._keys[stored]

    def _expired(self, key: TeamKey) -> bool:
        return key.refused_from is not None and self._clock() >= key.refused_from

    def authenticate(self, authorization: str | None) -> Team:
        """The team of an `Authorization` header, or the one 401 (nothing counted)."""
        key = self.key_of(presented_digest(authorization))
        if key is None or self._expired(key):
            raise _denied()
        return key.team


def _denied() -> AuthenticationFailed:
    return AuthenticationFailed(
        "Invalid or missing API key. Send 'Authorization: Bearer <your team key>'."
    )
