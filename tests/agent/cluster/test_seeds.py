"""Seed lists: static entries validated, a DNS name resolved each call."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import pytest

from agent.cluster.seeds import format_peer, parse_peer, resolve_seeds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.7:8034", ("10.0.0.7", 8034)),
        ("node-1.meshlet:1", ("node-1.meshlet", 1)),
        ("[::1]:8034", ("::1", 8034)),
        ("[fd00::7]:65535", ("fd00::7", 65535)),
    ],
)
def test_parse_peer_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_peer(text) == expected
    assert format_peer(*expected) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.0.0.7", "expected host:port"),
        (":8034", "empty host"),
        ("[]:8034", "empty host"),
        ("host:0", "1..65535"),
        ("host:65536", "1..65535"),
        ("host:http", "1..65535"),
        ("host:", "1..65535"),
        ("host:-1", "1..65535"),
        ("::1:8034", "brackets"),
        ("[::1:8034", "unclosed"),
    ],
)
def test_parse_peer_rejects_with_a_clear_message(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_peer(text)
    assert repr(text) in str(info.value), "the message names the bad entry"


async def test_static_only_as_given_deduplicated() -> None:
    seeds = await resolve_seeds(["b:1", "a:2", "b:1", "[::1]:3"], "", 8034)
    assert seeds == ["b:1", "a:2", "[::1]:3"]


async def test_a_bad_static_entry_raises() -> None:
    with pytest.raises(ValueError, match="port"):
        await resolve_seeds(["a:1", "b:99999"], "", 8034)


async def test_dns_name_is_resolved_for_real() -> None:
    seeds = await resolve_seeds(["10.0.0.9:8034"], "localhost", 8034)
    assert seeds[0] == "10.0.0.9:8034"
    resolved = seeds[1:]
    assert resolved, "localhost resolves to something"
    assert set(resolved) <= {"127.0.0.1:8034", "[::1]:8034"}
    assert len(resolved) == len(set(resolved))


async def test_dns_records_follow_static_ones_without_duplicates() -> None:
    calls: list[tuple[str, int]] = []

    async def resolver(name: str, port: int) -> Sequence[str]:
        calls.append((name, port))
        return ["10.0.0.2", "fd00::3", "10.0.0.1", "10.0.0.2"]

    seeds = await resolve_seeds(["10.0.0.1:8034"], "meshlet-peers", 8034, resolver)
    assert seeds == ["10.0.0.1:8034", "10.0.0.2:8034", "[fd00::3]:8034"]
    await resolve_seeds([], "meshlet-peers", 8034, resolver)
    assert calls == [("meshlet-peers", 8034)] * 2, "resolved again on every call"


async def test_dns_failure_yields_the_static_ones(caplog: pytest.LogCaptureFixture) -> None:
    async def resolver(name: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    seeds = await resolve_seeds(["10.0.0.1:8034"], "meshlet-peers", 8034, resolver)
    assert seeds == ["10.0.0.1:8034"]
    assert "meshlet-peers" in caplog.text
