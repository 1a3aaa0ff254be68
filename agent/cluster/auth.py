"""Peer message authentication: an HMAC-SHA256 over every message, with a shared key.

A sealed message is::

    version (1 byte, 0x01) | key id (8 bytes) | HMAC-SHA256(key, payload) (32 bytes) | payload

Decisions:

- **Key rotation by list.** A ``Signer`` accepts every key in its list and signs
  with the first. Rotating from ``old`` to ``new`` takes three rollouts, each safe
  while nodes run mixed versions: ``[old, new]`` (everyone accepts new), then
  ``[new, old]`` (everyone signs with new), then ``[new]``.
- **The key id is a digest of the key** (first 8 bytes of SHA-256 over a fixed label
  and the key), so no id needs configuring, the receiver finds the right key in
  O(1), and a message signed with a key it does not hold is told apart from a
  forged one ("unknown_key" vs "bad_mac") for the operator.
- **Size is checked before any hashing**, so an oversized message costs nothing.
- The MAC is compared with ``hmac.compare_digest`` (constant time).
- Every rejection raises ``BadMessage`` with a ``reason`` and is counted in
  ``Signer.dropped`` by that reason; the caller drops the message.
- Not covered: replay. A recorded message can be sent again; membership messages
  are idempotent under the incarnation rules, so a replay at worst repeats old news.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Sequence

from agent.errors import Code, MeshletError

VERSION = b"\x01"
KEY_ID_BYTES = 8
MAC_BYTES = 32
HEADER_BYTES = len(VERSION) + KEY_ID_BYTES + MAC_BYTES
MIN_KEY_BYTES = 16


class BadMessage(MeshletError):
    """A peer message that failed authentication or decoding; it is dropped.

    ``reason`` is one of ``oversized``, ``truncated``, ``bad_version``,
    ``unknown_key``, ``bad_mac`` (from ``Signer``) or ``malformed``, ``spoofed_sender``,
    ``misdirected`` (from membership)."""

    code = Code.UNAUTHENTICATED

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def key_id(key: bytes) -> bytes:
    """The 8-byte id a sealed message names its key by."""
    return hashlib.sha256(b"meshlet-peer-key\x00" + key).digest()[:KEY_ID_BYTES]


class Signer:
    """Seals outgoing peer messages and opens incoming ones.

    ``keys``: the accepted shared keys, at least ``MIN_KEY_BYTES`` each; ``keys[0]``
    signs. ``max_bytes``: the largest sealed message accepted (header included)."""

    def __init__(self, keys: Sequence[bytes], max_bytes: int = 1 << 20) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"peer keys must be at least {MIN_KEY_BYTES} bytes")
        self._signing_key = bytes(keys[0])
        self._signing_id = key_id(self._signing_key)
        self._keys = {key_id(k): bytes(k) for k in keys}
        self.max_bytes = max_bytes
        self.dropped: Counter[str] = Counter()

    def seal(self, payload: bytes) -> bytes:
        mac = hmac.digest(self._signing_key, payload, "sha256")
        return VERSION + self._signing_id + mac + payload

    def open(self, data: bytes) -> bytes:
        """The payload of a sealed message; raises ``BadMessage`` (and counts it)."""
        if len(data) > self.max_bytes:
            raise self._drop("oversized", f"{len(data)} bytes is over {self.max_bytes}")
        if len(data) < HEADER_BYTES:
            raise self._drop("truncated", f"{len(data)} bytes is shorter than the header")
        if data[:1] != VERSION:
            raise self._drop("bad_version", f"unknown version {data[0]}")
        kid = data[1 : 1 + KEY_ID_BYTES]
        key = self._keys.get(kid)
        if key is None:
            raise self._drop("unknown_key", f"signed with unknown key id {kid.hex()}")
        mac = data[1 + KEY_ID_BYTES : HEADER_BYTES]
        payload = data[HEADER_BYTES:]
        if not hmac.compare_digest(mac, hmac.digest(key, payload, "sha256")):
            raise self._drop("bad_mac", "the MAC does not match")
        return payload

    def _drop(self, reason: str, message: str) -> BadMessage:
        self.dropped[reason] += 1
        return BadMessage(reason, message)
