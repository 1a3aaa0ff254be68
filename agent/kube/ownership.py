"""Which live member acts for a resource: rendezvous (highest random weight) hashing.

Every agent watches every resource, but for each resource name exactly one
live member writes the registry entries and the status: the member whose
hash with the name scores highest. All members compute the same owner from
the same member list, and when a member joins or leaves only the names it
wins or held move (each name keeps its owner and score in its ``Claim``, so a
join costs one hash per name and a departure re-scores only the names the
departed member held). Alone (no cluster), this node owns every name.

Members are the cluster's live members (ALIVE or SUSPECT: a suspect may well be
alive, and moving its names back and forth would cost more than a short wait).

A node that has just started in a cluster sees only itself until it joins;
were it to act then, it would own every name and write every status from a
view with no peer's copies in it. So until it sees another member, or
``settle_s`` has passed (a cluster of one), it owns nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

MembersFn = Callable[[], Iterable[str]]


def score(name: str, member: str) -> int:
    """The weight of ``member`` for ``name``: 64 bits of BLAKE2b of both."""
    digest = hashlib.blake2b(f"{member}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Ownership:
    def __init__(self, self_id: str, members: MembersFn | None = None, settle_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``self_id``: this node as the member list names it; ``members()``: the
        live members (this one included), or None when the node runs alone;
        ``settle_s``: how long to wait for another member before acting alone."""
        self.self_id = self_id
        self._members_fn = members
        self._clock = clock
        self._settle_by = clock() + settle_s
        self.settled = members is None or settle_s <= 0
        self.members: frozenset[str] = frozenset({self_id})

    @property
    def alone(self) -> bool:
        return self._members_fn is None

    def refresh(self) -> tuple[set[str], set[str]]:
        """Read the member list again: (members added, members removed). When
        the node settles, every member counts as added (every owner is new)."""
        if self._members_fn is None:
            return set(), set()
        now = frozenset(self._members_fn()) | {self.self_id}
        if not self.settled:
            if len(now) == 1 and self._clock() < self._settle_by:
                return set(), set()
            self.settled = True
            self.members = now
            return set(now), set()
        added, removed = set(now - self.members), set(self.members - now)
        self.members = now
        return added, removed

    def owner_of(self, name: str) -> tuple[str, int]:
        """(owner, its score) for ``name`` among the current members; ("", 0)
        before the node has settled."""
        if self._members_fn is None:
            return self.self_id, 0
        if not self.settled:
            return "", 0
        return max(((m, score(name, m)) for m in self.members), key=lambda p: (p[1], p[0]))

    def reassign(self, name: str, owner: str, owner_score: int, added: set[str],
                 removed: set[str]) -> tuple[str, int]:
        """A name's owner after ``added`` joined and ``removed`` left, from its
        owner before: only a departed owner costs a full re-score."""
        if not owner or owner in removed or self._members_fn is None:
            return self.owner_of(name)
        for member in added:
            s = score(name, member)
            if (s, member) > (owner_score, owner):
                owner, owner_score = member, s
        return owner, owner_score
