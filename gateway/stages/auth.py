"""Authentication stage: `Authorization: Bearer <key>` to the team that owns the key.

Keys are known only as SHA-256 digests. The presented key is hashed once, looked up in a
dict built at start-up, and the stored digest is compared again with
`hmac.compare_digest` so the answer does not depend on how many leading bytes matched.
Every failure gets the same message; the key is never logged, echoed or forwarded.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.errors import AuthenticationFailed

_BEARER = "bearer "
# Longest key worth hashing; anything longer cannot be one of ours.
_MAX_KEY_LENGTH = 512


@dataclass(frozen=True, slots=True)
class Team:
    name: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Authenticator:
    def __init__(self, config: GatewayConfig) -> None:
        self._teams_by_digest: dict[bytes, Team] = {}
        for name, team_config in config.teams.items():
            team = Team(name=name)
            for key_hash in team_config.key_hashes:
                self._teams_by_digest[bytes.fromhex(key_hash)] = team
        self._stored = {digest: digest for digest in self._teams_by_digest}

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
