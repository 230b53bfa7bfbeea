"""Authentication stage: `Authorization: Bearer <key>` to the team that owns the key.

Keys are known only as SHA-256 digests. The presented key is hashed once, looked up in a
dict built at start-up, and the stored digest is compared again with
`hmac.compare_digest` so the answer does not depend on how many leading bytes matched.
Every failure gets the same message; the key is never logged, echoed or forwarded.

Reads: the `Authorization` header. Writes: `team`.
"""

from __future__ import annotations

import hashlib
import hmac

from gateway.config import GatewayConfig
from gateway.errors import AuthenticationFailed
from gateway.pipeline import Exchange, Stage
from gateway.teams import Team, teams_of

_BEARER = "bearer "
# Longest key worth hashing; anything longer cannot be one of ours.
_MAX_KEY_LENGTH = 512


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Authenticator(Stage):
    name = "auth"

    def __init__(self, config: GatewayConfig) -> None:
        teams = teams_of(config)
        self._teams_by_digest: dict[bytes, Team] = {}
        for name, team_config in config.teams.items():
            for key_hash in team_config.key_hashes:
                self._teams_by_digest[bytes.fromhex(key_hash)] = teams[name]
        self._stored = {digest: digest for digest in self._teams_by_digest}

    async def enter(self, exchange: Exchange) -> None:
        exchange.team = self.authenticate(exchange.http.headers.get("Authorization"))

    def authenticate(self, authorization: str | None) -> Team:
        if not authorization or len(authorization) > _MAX_KEY_LENGTH + len(_BEARER):
            raise _denied()
        if authorization[: len(_BEARER)].lower() != _BEARER:
            raise _denied()
        key = authorization[len(_BEARER) :].strip()
        if not key:
            raise _denied()
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        stored = self._stored.get(digest)
        if stored is None or not hmac.compare_digest(stored, digest):
            raise _denied()
        return self._teams_by_digest[stored]


def _denied() -> AuthenticationFailed:
    return AuthenticationFailed(
        "Invalid or missing API key. Send 'Authorization: Bearer <your team key>'."
    )
