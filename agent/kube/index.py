"""The little meshlet keeps per resource, and who holds each name.

No object is kept: a ``Claim`` is a handful of small fields per resource
(where it lives, its uid, resourceVersion and generation, the model id its
spec derives, the digest of its status as last seen, who acts for it), so
100,000 resources cost tens of MiB, not the gigabyte their objects would.
What a resource asks for is in the registry; its spec is read again (GET) on
the rare occasions it is needed and not at hand.

Names: the vmodel is named after the resource, so two watched resources with
the same name (two namespaces, or a Model and a Predictor) conflict. The older
(``creationTimestamp``, then ``uid``) holds the name (``winners``); the other
waits in ``losers`` with a failed status saying so, and takes the name over
when the holder goes.
"""

from __future__ import annotations

from collections.abc import Iterator

from agent.kube.kinds import Kind
from agent.kube.status import NAME_CONFLICT, Problem

LoserKey = tuple[str, str, str]  # (kind name, namespace, name)


class Claim:
    """One watched resource."""

    __slots__ = ("created", "digest", "epoch", "generation", "kind", "model_id", "name",
                 "namespace", "owner", "problem", "ready", "rehandle", "resource_version",
                 "score", "since", "uid")

    def __init__(self, kind: Kind, namespace: str, name: str, uid: str, created: int) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.created = created  # creationTimestamp, epoch seconds
        self.resource_version = ""
        self.generation = 0
        self.model_id = ""  # the concrete model its spec derives ("": none, see problem)
        self.problem: Problem | None = None  # invalid spec, or a name conflict
        self.digest = 0  # status digest as last seen on the object (0: none)
        self.ready: bool | None = None  # its Ready condition as last seen
        self.since = 0  # and that condition's lastTransitionTime, epoch seconds
        self.owner = ""  # the member that acts for it (rendezvous hash of the name)
        self.score = 0  # the owner's hash score for the name
        self.epoch = 0  # the list that last saw it (``ResourceSync`` sweeps the others)
        self.rehandle = False  # handle its object again even if its version is the same

    @property
    def loser_key(self) -> LoserKey:
        return (self.kind.name, self.namespace, self.name)

    def __repr__(self) -> str:
        return f"Claim({self.kind.name} {self.namespace}/{self.name} -> {self.model_id or '-'})"


def older(a: Claim, b: Claim) -> bool:
    """``a`` was created before ``b`` (the uid breaks a tie)."""
    return (a.created, a.uid) < (b.created, b.uid)


def conflict(loser: Claim, holder: Claim) -> Problem:
    return Problem(
        NAME_CONFLICT,
        f"name {loser.name!r} is already served for {holder.kind.name} "
        f"{holder.namespace}/{holder.name}, an older resource; rename this one or delete "
        "that one",
    )


class Index:
    def __init__(self) -> None:
        self.winners: dict[str, Claim] = {}  # name -> the claim that holds it
        self.losers: dict[LoserKey, Claim] = {}  # the claims waiting for a name

    def __len__(self) -> int:
        return len(self.winners) + len(self.losers)

    def find(self, kind: Kind, namespace: str, name: str) -> Claim | None:
        winner = self.winners.get(name)
        if winner is not None and winner.kind is kind and winner.namespace == namespace:
            return winner
        return self.losers.get((kind.name, namespace, name))

    def named(self, name: str) -> list[Claim]:
        """The holder of ``name`` and every claim waiting for it."""
        winner = self.winners.get(name)
        found = [winner] if winner is not None else []
        found += [c for c in self.losers.values() if c.name == name]
        return found

    def successor(self, name: str) -> Claim | None:
        """The oldest claim waiting for ``name``."""
        waiting = [c for c in self.losers.values() if c.name == name]
        best: Claim | None = None
        for claim in waiting:
            if best is None or older(claim, best):
                best = claim
        return best

    def claims(self) -> Iterator[Claim]:
        yield from list(self.winners.values())
        yield from list(self.losers.values())
