"""Authentication stage: `Authorization: Bearer <key>` to the team that owns the key.

Keys are known only as SHA-256 digests. The presented key is hashed once, looked up in a
dict built at start-up, and the stored digest is compared again with
`hmac.compare_digest` so the answer does not depend on how many leading bytes matched.
Every 401 gets the same message; the key is never logged, echoed or forwarded.

A failure is counted against the client's address (`auth_failures`), which may turn it
into a 429; once an address is blocked its requests are refused before their key is looked
up. A valid key costs no call to anyone.

Reads: the `Authorization` header, the client address (only when authentication fails, or
while some address is blocked). Writes: `team`, or `auth_failure`.
"""

from __future__ import annotations

import hashlib
import hmac

from gateway.auth_failures import AuthFailure, AuthFailureLimit
from gateway.config import GatewayConfig
from gateway.errors import AuthenticationFailed
from gateway.pipeline import Exchange, Stage
from gateway.teams import Team, teams_of

_BEARER = "bearer "
# Longest key worth hashing; anything longer cannot be one of ours.
_MAX_KEY_LENGTH = 512
# Hex digits of a key's SHA-256 that the audit line may hold: enough to tell keys apart in
# an investigation, far too few to find a key by.
FINGERPRINT_HEX = 8


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

    def __init__(self, config: GatewayConfig, failures: AuthFailureLimit) -> None:
        teams = teams_of(config)
        self._failures = failures
        self._teams_by_digest: dict[bytes, Team] = {}
        for name, team_config in config.teams.items():
            for key_hash in team_config.key_hashes:
                self._teams_by_digest[bytes.fromhex(key_hash)] = teams[name]
        self._stored = {digest: digest for digest in self._teams_by_digest}

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
        team = self.team_of(digest)
        if team is not None:
            exchange.team = team
            return
        if digest is not None:
            reason = "unknown_key"
        else:
            reason = "missing" if not authorization else "malformed"
        failure = AuthFailure(reason, failures.client(http), fingerprint(digest))
        exchange.auth_failure = failure
        raise await failures.failed(failure) or _denied()

    def team_of(self, digest: bytes | None) -> Team | None:
        stored = None if digest is None else self._stored.get(digest)
        if stored is None or digest is None or not hmac.compare_digest(stored, digest):
            return None
        return self._teams_by_digest[stored]

    def authenticate(self, authorization: str | None) -> Team:
        """The team of an `Authorization` header, or the one 401 (nothing counted)."""
        team = self.team_of(presented_digest(authorization))
        if team is None:
            raise _denied()
        return team


def _denied() -> AuthenticationFailed:
    return AuthenticationFailed(
        "Invalid or missing API key. Send 'Authorization: Bearer <your team key>'."
    )
