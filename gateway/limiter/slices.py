"""Budget slices: a gateway process admits most requests without a Redis call, and the
limits shared through Redis stay exact.

The scheme is quota delegation, as in Google's Doorman (clients ask a server for a share of
a global capacity, which it leases to them for a while) and Envoy's rate-limit quota
service (RLQS, whose server hands out "quota assignments" that a proxy enforces locally
until they expire); for a token bucket it is token-bucket delegation. Here the server is
Redis, and a share is a **slice** of one limit's budget, taken atomically by the same Lua
script that admits requests (`limiter.redis`):
- a requests or tokens bucket (GCRA): `want` units are consumed in Redis exactly as an
  admission of cost `want` would be (the theoretical arrival time moves on by want x the
  emission interval), and a ticket (the slice's id) is opened for the slice's return;
- concurrency: `want` lease members (`id.0` .. `id.want-1`), with the lease lifetime.

This process then admits against its slices in memory, with no Redis call and no await: a
request is admitted locally when every limit of its budget (team, and team on model) has a
live slice with room for its cost (1 request, its reserved tokens, 1 slot); otherwise it
goes to Redis as before (one call, all its limits, exact), and the answer tells this book
how much Redis has left. When a slice is half spent, the next one is taken in the
background (prefetch), so in the steady state no request waits for Redis.

**Exactness.** (a) Never more than the limit: a slice is consumed in Redis before a unit of
it is used here, and every process's slices together with Redis's own remainder never
exceed the budget. (b) Never fewer than the limit by more than the unused units the
processes hold: a slice lives `slice_ttl_ms` (default 1 s); when it expires, is replaced,
or the process stops (or reloads with different limits for the key), what it holds unused
is given back: its return (a settlement that closes the slice's ticket, so it applies
once however often it is sent) moves the theoretical arrival time back by the unused units
x the emission interval, and concurrency members not in use are removed.

**Small budgets stay exact.** A slice takes at most 1/`SLICE_DIVISOR` (16) of what Redis
says is left (so 16 processes could each hold one and Redis still keep as much; the number
of processes sharing a budget is unknown, so the divisor is conservative), and at least
`MIN_SLICE` (8) requests' worth (8 requests, 8 slots, 8 x the request's reserved tokens).
When what is left is below 16 x 8 requests' worth, no slice is taken: every request of that
budget is one Redis call, exactly as without slices. Slices start at the least and double
while they are spent within their lifetime (halve when more than half comes back unused),
so a busy team needs a few calls a second per process, and an idle one holds little.

**Settlements.** A request admitted from a slice settles into it while it is live: unused
reserved tokens go back into the slice (or a charge comes out of it), and its concurrency
slot is free for the next request. Once its slice is gone, the difference goes into the
key's current slice if there is one, else to Redis as a settlement (the rate-limit
stage's queue), applied once by a marker (`Settlement.once_ms`): no ticket was opened in
Redis for a request admitted here. Its concurrency member is then released in Redis.

**Redis down.** A live slice keeps admitting until it expires (at most `slice_ttl_ms`):
this is by design, the slice was paid for. Refills fail (the breaker applies); after
expiry the team's requests get the failure mode like any Redis call. A slice call whose
answer is lost (deadline) may still have run: its slices are given back after the call's
deadline has passed (a late call takes nothing; a return finds no ticket if nothing was
taken). A process that is killed returns nothing: its unused bucket units come back with
the bucket's refill, its concurrency members expire with the lease lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.limiter.base import (
    LimiterUnavailable,
    LimitKind,
    Settlement,
    SliceRequest,
    TokenAdjustment,
)

SLICE_DIVISOR = 16
MIN_SLICE = 8
# Concurrency slots in one slice at most (each is a lease member).
_MAX_SLOTS = 64
# A concurrency member freed by its request is used again by this process (put into the
# key's live slice) while it is younger than this; older, it is released: its lease (the
# longest call plus 60 s) must outlive any request that takes it.
_REUSE_S = 30.0
# After a refused or failed slice call, no other for this long (requests go to Redis).
_RETRY_S = 0.25
# Returns are sent together after this delay (a slice expiring with others of its team).
_RETURN_DELAY_S = 0.005
# A return, or a release of a lost slice, is sent this long after the call's deadline.
_MARGIN_S = 0.01


class SliceBackend(Protocol):
    @property
    def call_deadline_s(self) -> float: ...

    async def take_slices(
        self, tickets_key: str, wanted: Sequence[SliceRequest]
    ) -> list[tuple[bool, int]]: ...

    async def settle(self, settlements: Sequence[Settlement]) -> None: ...


@dataclass(slots=True, eq=False)
class Slice:
    """Units of one key held by this process: `left` of `size` (tokens may go below 0: a
    request charged more than it reserved; the return then charges Redis)."""

    slice_id: str
    size: int
    left: int
    granted: float  # monotonic, just before the call that took it
    expires: float
    limit: int  # the key's limit when it was taken (a return is in its units)
    free: list[str]  # concurrency: the lease members not in use
    live: bool = True


@dataclass(slots=True, eq=False)
class KeyState:
    """One Redis key's slices in this process, and what Redis last said is left of it."""

    kind: LimitKind
    key: str
    limit: int
    period_ms: int
    tickets_key: str
    ttl_ms: int
    current: Slice | None = None
    spare: Slice | None = None  # prefetched: used once `current` cannot serve
    remaining: int = -1  # Redis's last report (units outside every slice); -1: unknown
    want: int = 0  # the next slice's size (0: the least)
    refilling: bool = False
    # Units Redis admitted directly since the last slice was asked for (no slice could
    # serve them): demand the next slice should cover.
    missed: int = 0
    # Concurrency: slots of this process's slices in use by its requests.
    in_use: int = 0

    def view(self) -> int:
        """Units left as this process sees them: Redis's last report plus what it holds."""
        held = 0
        for piece in (self.current, self.spare):
            if piece is not None and piece.live:
                held += max(piece.left, 0)
        return max(self.remaining, 0) + held


@dataclass(frozen=True, slots=True)
class SliceEntry:
    kind: LimitKind
    key: str
    limit: int
    period_ms: int


@dataclass(slots=True, eq=False)
class SlicePlan:
    """One budget's limits in the order of its checks, as the rate-limit stage builds them
    (off the event loop, on a reload); tied to the book's key states on first use."""

    entries: tuple[SliceEntry, ...]
    tickets_key: str
    ttl_ms: int
    states: list[KeyState] | None = None
    refill_after: float = 0.0


@dataclass(slots=True)
class LocalTake:
    """What a request admitted from slices holds: a slice per limit of its budget, and a
    lease member per concurrency limit (in order)."""

    states: list[KeyState]
    slices: list[Slice]
    members: list[str] = field(default_factory=list)


class SliceBook:
    """This process's slices, by key: shared by every generation of the rate-limit stage
    (it belongs to the Redis backend, built once), given back when the backend closes."""

    def __init__(self, backend: SliceBackend, ttl_s: float) -> None:
        self._backend = backend
        self._ttl_s = ttl_s
        self._states: dict[str, KeyState] = {}
        # Returns waiting to be sent, by the key their team's tickets live under.
        self._returns: dict[str, list[tuple[Settlement, float]]] = {}
        self._sending = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ the hot path

    def take(self, plan: SlicePlan, tokens: int) -> LocalTake | None:
        """Admits a request of `tokens` locally, or None (then it goes to Redis)."""
        states = plan.states or self._resolve(plan)
        now = time.monotonic()
        slices: list[Slice] = []
        for state in states:
            cost = tokens if state.kind is LimitKind.TOKENS else 1
            piece = state.current
            if piece is None or piece.left < cost or piece.expires <= now:
                piece = self._next(state, cost, now)
                if piece is None:
                    self._refill(plan, tokens, now)
                    return None
            slices.append(piece)
        taken = LocalTake(states, slices)
        low = False
        for state, piece in zip(states, slices, strict=True):
            if state.kind is LimitKind.CONCURRENCY:
                taken.members.append(piece.free.pop())
                piece.left -= 1
                state.in_use += 1
            else:
                piece.left -= tokens if state.kind is LimitKind.TOKENS else 1
            low = low or piece.left * 2 < piece.size
        if low:
            self._refill(plan, tokens, now)
        return taken

    def observe(self, plan: SlicePlan, remaining: Sequence[int], tokens: int) -> None:
        """What Redis said is left of each limit after an admission it decided; a slice is
        taken when every limit has enough."""
        states = plan.states or self._resolve(plan)
        for state, left in zip(states, remaining, strict=True):
            state.remaining = left
            state.missed += tokens if state.kind is LimitKind.TOKENS else 1
        self._refill(plan, tokens, time.monotonic())

    def settle(self, taken: LocalTake, delta: int) -> list[Settlement]:
        """A request admitted from slices is done, with `delta` tokens more (or fewer) than
        it reserved: into its slices while they are live; what must go to Redis instead."""
        out: list[Settlement] = []
        late: list[TokenAdjustment] = []
        reuse_after = time.monotonic() - _REUSE_S
        members = iter(taken.members)
        last: KeyState | None = None
        for state, piece in zip(taken.states, taken.slices, strict=True):
            if state.kind is LimitKind.CONCURRENCY:
                member = next(members)
                state.in_use -= 1
                # Back to the key's live slice, even when its own is gone: it is this
                # process's, and another request can use it without a call.
                target = piece if piece.live else state.current
                if target is not None and target.live and piece.granted > reuse_after:
                    target.free.append(member)
                    target.left += 1
                else:
                    out.append(Settlement(member, None, (state.key,), ()))
            elif state.kind is LimitKind.TOKENS and delta:
                target = piece if piece.live else state.current
                if target is not None and target.live:
                    target.left -= delta
                else:
                    late.append(TokenAdjustment(state.key, piece.limit, delta, state.period_ms))
                    last = state
        if late and last is not None:
            out.append(
                Settlement(
                    f"o{secrets.token_hex(8)}",
                    last.tickets_key,
                    (),
                    tuple(late),
                    once_ms=last.ttl_ms,
                )
            )
        return out

    # ------------------------------------------------------------------ slices

    def _resolve(self, plan: SlicePlan) -> list[KeyState]:
        states = []
        for entry in plan.entries:
            state = self._states.get(entry.key)
            if state is None:
                state = self._states[entry.key] = KeyState(
                    entry.kind,
                    entry.key,
                    entry.limit,
                    entry.period_ms,
                    plan.tickets_key,
                    plan.ttl_ms,
                )
            elif (state.limit, state.period_ms) != (entry.limit, entry.period_ms):
                # A reload changed the limit: what is held under the old one goes back.
                for piece in (state.current, state.spare):
                    if piece is not None:
                        self._retire(state, piece)
                state.limit, state.period_ms = entry.limit, entry.period_ms
                state.remaining, state.want = -1, 0
            state.ttl_ms = max(state.ttl_ms, plan.ttl_ms)
            states.append(state)
        plan.states = states
        return states

    def _next(self, state: KeyState, cost: int, now: float) -> Slice | None:
        """The slice to use once the current one cannot serve `cost`: the spare."""
        piece = state.current
        if piece is not None and piece.expires <= now:
            self._retire(state, piece)
            piece = state.current  # the spare, promoted
            if piece is not None and piece.expires > now and piece.left >= cost:
                return piece
            return None
        spare = state.spare
        if spare is None or spare.expires <= now or spare.left < cost:
            return None
        if piece is not None:
            self._retire(state, piece)  # what it has left (less than `cost`) goes back
        state.current, state.spare = spare, None
        return spare

    def _refill(self, plan: SlicePlan, tokens: int, now: float) -> None:
        """Takes the next slices of `plan`'s limits in the background, when every limit can
        have one and some need one."""
        if self._closed or now < plan.refill_after:
            return
        states = plan.states or self._resolve(plan)
        needed: list[KeyState] = []
        urgent = False
        for state in states:
            if state.remaining < 0:
                return  # Redis has not said yet how much is left
            spare, piece = state.spare, state.current
            if state.refilling or (spare is not None and spare.live):
                continue
            if piece is None or not piece.live or piece.left * 2 < piece.size:
                urgent = True
                needed.append(state)
            elif piece.left * 4 < piece.size * 3 or piece.expires - now < self._ttl_s / 2:
                # Not needed yet, but soon: in the same call, so that a budget's limits
                # are refilled together rather than each by a call of its own.
                needed.append(state)
        if not urgent:
            return
        wanted = []
        for state in needed:
            least = MIN_SLICE * (tokens if state.kind is LimitKind.TOKENS else 1)
            piece = state.current
            if state.kind is LimitKind.CONCURRENCY:
                # Slots are a level, not a rate: enough for twice those in use here.
                state.want = 2 * state.in_use
            elif piece is not None and piece.left * 2 < piece.size and piece.expires > now:
                # Spent half within its life: demand outruns it. The next one at least
                # doubles, or covers a lifetime at the rate this one was spent.
                rate = (piece.size - piece.left) / max(now - piece.granted, 0.001)
                state.want = max(state.want, 2 * piece.size, int(rate * self._ttl_s))
            want = max(state.want, least, 2 * state.missed)
            want = min(want, state.remaining // SLICE_DIVISOR)
            if state.kind is LimitKind.CONCURRENCY:
                want = min(want, _MAX_SLOTS)
            if want < least or want <= 0:
                plan.refill_after = now + _RETRY_S
                return  # too little left: every request of this budget goes to Redis
            wanted.append(
                SliceRequest(
                    state.kind,
                    state.key,
                    state.limit,
                    state.period_ms,
                    want,
                    f"s{secrets.token_hex(8)}",
                    state.ttl_ms,
                )
            )
        for state in needed:
            state.refilling = True
            state.missed = 0
        self._spawn(self._take(plan, needed, wanted), "take-slices")

    async def _take(
        self, plan: SlicePlan, states: list[KeyState], wanted: list[SliceRequest]
    ) -> None:
        started = time.monotonic()
        try:
            answers = await self._backend.take_slices(plan.tickets_key, wanted)
        except (LimiterUnavailable, asyncio.CancelledError) as failed:
            for state in states:
                state.refilling = False
            plan.refill_after = time.monotonic() + _RETRY_S
            if isinstance(failed, asyncio.CancelledError) or failed.may_have_run:
                self._release_lost(plan.tickets_key, states, wanted, started)
            if isinstance(failed, asyncio.CancelledError):
                raise
            return
        now = time.monotonic()
        for state, want, (granted, left) in zip(states, wanted, answers, strict=True):
            state.refilling = False
            state.remaining = left
            if not granted:
                plan.refill_after = now + _RETRY_S
                continue
            if self._closed or state.limit != want.limit:  # not to be used: give it back
                self._queue(plan.tickets_key, self._returns_of(state, want, want.want), want.ttl_ms)
                continue
            members = (
                [f"{want.slice_id}.{i}" for i in range(want.want)]
                if state.kind is LimitKind.CONCURRENCY
                else []
            )
            # Its life counts from before the call: it never outlives what Redis allows.
            piece = Slice(
                want.slice_id,
                want.want,
                want.want,
                started,
                started + self._ttl_s,
                want.limit,
                members,
            )
            if state.current is None or not state.current.live:
                state.current = piece
            elif state.spare is None:
                state.spare = piece
            else:  # cannot happen (a key is refilled only without a spare): give it back
                self._retire(state, piece)
                continue
            asyncio.get_running_loop().call_later(
                max(piece.expires - now, 0.0), self._expire, state, piece
            )

    def _expire(self, state: KeyState, piece: Slice) -> None:
        if piece.live:
            self._retire(state, piece)

    def _retire(self, state: KeyState, piece: Slice) -> None:
        """`piece` is used no more: what it holds unused goes back to Redis."""
        piece.live = False
        if state.current is piece:
            state.current, state.spare = state.spare, None
        elif state.spare is piece:
            state.spare = None
        if piece.left * 2 > piece.size and state.kind is not LimitKind.CONCURRENCY:
            # Mostly unused: the next one smaller.
            state.want = piece.size // 2
        returns = self._returns_of(state, piece, piece.left)
        piece.left, piece.free = 0, []
        self._queue(state.tickets_key, returns, state.ttl_ms)

    @staticmethod
    def _returns_of(state: KeyState, piece: Slice | SliceRequest, unused: int) -> list[Settlement]:
        if state.kind is LimitKind.CONCURRENCY:
            members = (
                piece.free
                if isinstance(piece, Slice)
                else [f"{piece.slice_id}.{i}" for i in range(piece.want)]
            )
            return [Settlement(member, None, (state.key,), ()) for member in members]
        adjustments = (
            (TokenAdjustment(state.key, piece.limit, -unused, state.period_ms),) if unused else ()
        )
        # Closing the ticket even when nothing is left to give: nothing stays behind.
        return [Settlement(piece.slice_id, state.tickets_key, (), adjustments)]

    def _release_lost(
        self, tickets_key: str, states: list[KeyState], wanted: list[SliceRequest], started: float
    ) -> None:
        """A slice call whose answer was lost may have run: gives back all it asked for, once
        its deadline has passed (a call cannot take anything after it, so this release is
        not overtaken by it; a return that finds no ticket gives nothing back)."""
        returns = [
            settlement
            for state, want in zip(states, wanted, strict=True)
            for settlement in self._returns_of(state, want, want.want)
        ]
        wait = started + self._backend.call_deadline_s + _MARGIN_S - time.monotonic()
        loop = asyncio.get_running_loop()
        ttl_ms = max(want.ttl_ms for want in wanted)
        loop.call_later(max(wait, 0.0), self._queue, tickets_key, returns, ttl_ms)

    # ------------------------------------------------------------------ returns

    def _queue(self, tickets_key: str, returns: list[Settlement], ttl_ms: int) -> None:
        """Sends `returns` soon; each may be sent again (on failure) for `ttl_ms`, the life
        of its ticket or lease members, after which it is moot."""
        if not returns:
            return
        until = time.monotonic() + ttl_ms / 1000
        self._returns.setdefault(tickets_key, []).extend((r, until) for r in returns)
        if not self._sending and not self._closed:
            self._sending = True
            self._spawn(self._send_soon(), "return-slices")

    async def _send_soon(self) -> None:
        await asyncio.sleep(_RETURN_DELAY_S)
        self._sending = False
        pending, self._returns = self._returns, {}
        await asyncio.gather(*(self._send(team, batch) for team, batch in pending.items()))

    async def _send(self, tickets_key: str, batch: list[tuple[Settlement, float]]) -> bool:
        """One call for a team's returns (one hash tag); kept and sent again on failure
        until they are moot (their tickets and members have expired)."""
        now = time.monotonic()
        batch = [(settlement, until) for settlement, until in batch if until > now]
        if not batch:
            return True
        try:
            await self._backend.settle([settlement for settlement, _ in batch])
        except LimiterUnavailable:
            if self._closed:
                return False
            await asyncio.sleep(_RETRY_S)
            self._returns.setdefault(tickets_key, []).extend(batch)
            if not self._sending:
                self._sending = True
                self._spawn(self._send_soon(), "return-slices")
            return False
        return True

    # ------------------------------------------------------------------ life

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Gives back everything held unused (one call per team), once the slice calls in
        flight have answered; never raises."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._backend.call_deadline_s + 0.1)
        self._closed = True
        for state in self._states.values():
            for piece in (state.current, state.spare):
                if piece is not None and piece.live:
                    self._retire(state, piece)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending, self._returns = self._returns, {}
        await asyncio.gather(*(self._send(team, batch) for team, batch in pending.items()))
