from __future__ import annotations

import pytest

from agent.cluster.auth import HEADER_BYTES, BadMessage, Signer

OLD = b"o" * 32
NEW = b"n" * 32


def _reason(signer: Signer, data: bytes) -> str:
    with pytest.raises(BadMessage) as caught:
        signer.open(data)
    return caught.value.reason


def test_round_trip() -> None:
    signer = Signer([OLD])
    assert signer.open(signer.seal(b"hello")) == b"hello"
    assert signer.open(signer.seal(b"")) == b""
    assert not signer.dropped


def test_rotation_accepts_old_and_signs_with_first() -> None:
    old_only, rotated, new_only = Signer([OLD]), Signer([NEW, OLD]), Signer([NEW])
    assert rotated.open(old_only.seal(b"x")) == b"x"
    assert new_only.open(rotated.seal(b"y")) == b"y"
    assert _reason(old_only, rotated.seal(b"z")) == "unknown_key"


def test_each_bad_message_is_dropped_and_counted_by_reason() -> None:
    signer = Signer([OLD], max_bytes=HEADER_BYTES + 10)
    good = signer.seal(b"payload")
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    forged_mac = good[:9] + bytes(32) + good[HEADER_BYTES:]
    cases = {
        "unknown_key": Signer([NEW]).seal(b"payload"),
        "bad_mac": tampered,
        "truncated": good[: HEADER_BYTES - 1],
        "oversized": signer.seal(b"p" * 11),
        "bad_version": b"\x02" + good[1:],
    }
    for reason, data in cases.items():
        assert _reason(signer, data) == reason
    assert _reason(signer, forged_mac) == "bad_mac"
    assert _reason(signer, b"") == "truncated"
    assert signer.dropped == {
        "unknown_key": 1, "bad_mac": 2, "truncated": 2, "oversized": 1, "bad_version": 1,
    }


def test_rejects_no_keys_and_short_keys() -> None:
    with pytest.raises(ValueError):
        Signer([])
    with pytest.raises(ValueError):
        Signer([b"short"])
