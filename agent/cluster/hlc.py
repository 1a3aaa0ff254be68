"""Hybrid logical clock: timestamps that order registry writes across nodes.

A ``Timestamp`` is ``(wall_ms, logical, node)``, compared in that order. The
hybrid clock (Kulkarni et al., "Logical Physical Clocks", 2014) keeps
``wall_ms`` close to real time while guaranteeing that a timestamp issued after
seeing another is greater than it, whatever the physical clocks say. The node
id breaks the last tie, so two different nodes never issue equal timestamps;
one node never issues the same timestamp twice (``now`` is strictly
monotonic), so a timestamp names exactly one write in the cluster.

Decisions:

* A remote timestamp far ahead of our physical clock is **accepted and
  merged**, then counted (``ahead_observed``, ``max_ahead_ms``) and logged once
  per node. The paper's variant rejects messages more than epsilon ahead; here
  that would be worse: the skewed node's registrations would be refused (a lost
  registration), and if we only stored its writes without advancing our clock,
  our later writes to the same key would carry smaller stamps and lose to the
  earlier, skewed one until real time caught up, i.e. nobody else could change
  that model for minutes. Merging avoids both: our next stamp is greater than
  anything we have seen, so causally later writes always win. The consequence
  is bounded and documented: while a node's clock is ahead by *d*, every clock
  that has heard from it keeps ``wall_ms`` pinned at the fast value and counts
  ``logical`` up, for at most *d*; among truly *concurrent* writes (neither saw
  the other) the fast node's writes win during that time. Fix the node's NTP;
  nothing breaks meanwhile.
* ``logical`` is unbounded (not the paper's 16 bits): under a skew of minutes
  and a high write rate it could pass 65535, and a wrapped counter would break
  ordering. Timestamps are therefore encoded as ``"<wall>.<logical>.<node>"``
  rather than a fixed-width, lexically ordered string; compare ``Timestamp``
  objects, never encodings.
* ``observe`` only merges (``max`` of the two ``(wall, logical)`` pairs) and
  issues nothing: a replica applies thousands of entries per anti-entropy
  round and needs no receive-event timestamps, only the guarantee that its
  next ``now()`` is above all of them.
* A restarted node loses its clock state; if its physical clock went back
  across the restart it could reissue old timestamps. The replica observes
  every stored stamp when it loads, which restores the guarantee.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Wall times are integer ms; 2**53 keeps them exact in JSON numbers of any peer.
MAX_WALL_MS = 2**53 - 1


def system_ms() -> int:
    """The physical clock: Unix time in integer milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """One point of hybrid time; ordered by wall_ms, then logical, then node."""

    wall_ms: int
    logical: int
    node: str

    def encode(self) -> str:
        """Compact wire form ``"<wall_ms>.<logical>.<node>"`` (node may hold dots)."""
        return f"{self.wall_ms}.{self.logical}.{self.node}"

    @classmethod
    def decode(cls, text: str) -> Timestamp:
        """Parse ``encode``'s output; raise ValueError naming what is wrong."""
        if not isinstance(text, str):
            raise ValueError(f"timestamp must be a string, got {type(text).__name__}")
        parts = text.split(".", 2)
        if len(parts) != 3:
            raise ValueError(f"timestamp {text!r} is not '<wall_ms>.<logical>.<node>'")
        wall, logical, node = parts
        if not (wall.isdigit() and logical.isdigit()):
            raise ValueError(f"timestamp {text!r}: wall_ms and logical must be decimal")
        return cls.checked(int(wall), int(logical), node)

    @classmethod
    def checked(cls, wall_ms: int, logical: int, node: str) -> Timestamp:
        """Build a timestamp from untrusted parts; raise ValueError if out of range."""
        if isinstance(wall_ms, bool) or not isinstance(wall_ms, int):
            raise ValueError("timestamp wall_ms must be an integer")
        if isinstance(logical, bool) or not isinstance(logical, int):
            raise ValueError("timestamp logical must be an integer")
        if not 0 <= wall_ms <= MAX_WALL_MS:
            raise ValueError(f"timestamp wall_ms {wall_ms} is out of range")
        if logical < 0:
            raise ValueError(f"timestamp logical {logical} is negative")
        if not isinstance(node, str) or not node:
            raise ValueError("timestamp node must be a non-empty string")
        return cls(wall_ms, logical, node)


class HybridClock:
    """Issues strictly increasing timestamps for one node; thread-safe.

    ``now_ms`` is the physical clock (injected so tests can skew it and move it
    backwards). ``max_drift_ms`` only decides when an observed timestamp counts
    as "ahead of us" for the counters and the log; see the module docstring for
    why such timestamps are still merged.
    """

    def __init__(
        self,
        node: str,
        now_ms: Callable[[], int] = system_ms,
        max_drift_ms: int = 60_000,
    ) -> None:
        if not node:
            raise ValueError("clock node id is empty")
        self._node = node
        self._now_ms = now_ms
        self._max_drift_ms = max_drift_ms
        self._wall = 0
        self._logical = 0
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.ahead_observed = 0  # remote stamps more than max_drift_ms ahead of us
        self.max_ahead_ms = 0  # the largest such lead seen

    @property
    def node(self) -> str:
        return self._node

    def physical_ms(self) -> int:
        """This node's physical clock, as injected."""
        return self._now_ms()

    def now(self) -> Timestamp:
        """A timestamp for a local event: greater than every one issued or observed."""
        physical = self._now_ms()
        with self._lock:
            if physical > self._wall:
                self._wall, self._logical = physical, 0
            else:  # physical clock behind (skew, or it stepped back): count instead
                self._logical += 1
            return Timestamp(self._wall, self._logical, self._node)

    def observe(self, remote: Timestamp) -> None:
        """Merge a received timestamp, so the next ``now()`` is greater than it."""
        physical = self._now_ms()
        ahead = remote.wall_ms - physical
        if ahead > self._max_drift_ms:
            self._note_ahead(remote.node, ahead)
        with self._lock:
            if (remote.wall_ms, remote.logical) > (self._wall, self._logical):
                self._wall, self._logical = remote.wall_ms, remote.logical

    def _note_ahead(self, node: str, ahead_ms: int) -> None:
        with self._lock:
            self.ahead_observed += 1
            self.max_ahead_ms = max(self.max_ahead_ms, ahead_ms)
            first = node not in self._warned
            self._warned.add(node)
        if first:
            log.warning(
                "clock of node %s is %.1f s ahead of ours (limit %.1f s): merged anyway; "
                "check NTP on both nodes",
                node,
                ahead_ms / 1000,
                self._max_drift_ms / 1000,
            )
