"""Mutual TLS on the peer port: a real listener on loopback, certificates made here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cluster.stream_transport import StreamTransport
from agent.cluster.tls import PeerTls
from agent.cluster.transport import PeerUnreachable
from tests.certs import Ca, make_ca, make_peer_tls, write_pem

MAX_BYTES = 1 << 20
TIMEOUT_S = 5.0  # an upper bound only: every failure here is a refused handshake


@dataclass
class _Pki:
    ca: Ca
    ca_file: Path
    server: PeerTls
    client: PeerTls
    rogue: PeerTls  # a client certificate from another CA, trusting the right one


@pytest.fixture
def pki(tmp_path: Path) -> _Pki:
    ca, ca_file = make_ca(tmp_path / "ca", "meshlet test CA")
    other_ca, other_ca_file = make_ca(tmp_path / "other-ca", "someone else's CA")
    rogue = make_peer_tls(tmp_path / "rogue", other_ca, other_ca_file)
    return _Pki(
        ca, ca_file,
        server=make_peer_tls(tmp_path / "server", ca, ca_file),
        client=make_peer_tls(tmp_path / "client", ca, ca_file),
        rogue=PeerTls(rogue.cert_file, rogue.key_file, ca_file),
    )


@pytest.fixture
async def server_address(pki: _Pki) -> AsyncIterator[str]:
    """A peer server on loopback over mutual TLS whose handler echoes with a prefix."""
    transport = StreamTransport("127.0.0.1", MAX_BYTES, tls=pki.server)
    senders: list[str] = []

    async def echo(sender: str, payload: bytes) -> bytes:
        senders.append(sender)
        return b"echo:" + payload

    transport.serve(echo)
    port = await transport.listen("127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await transport.close()
    assert all(s == "127.0.0.1" for s in senders)


async def _ask(address: str, tls: PeerTls | None) -> bytes:
    client = StreamTransport("127.0.0.1", MAX_BYTES, tls=tls)
    try:
        return await client.request(address, b"hello", TIMEOUT_S)
    finally:
        await client.close()


async def test_client_with_a_cluster_certificate_gets_the_reply(
    server_address: str, pki: _Pki
) -> None:
    assert await _ask(server_address, pki.client) == b"echo:hello"


async def test_client_without_tls_is_refused(server_address: str) -> None:
    with pytest.raises(PeerUnreachable):
        await _ask(server_address, None)


async def test_client_with_a_certificate_from_another_ca_is_refused(
    server_address: str, pki: _Pki
) -> None:
    with pytest.raises(PeerUnreachable):
        await _ask(server_address, pki.rogue)


async def test_server_without_the_expected_name_is_refused(
    server_address: str, pki: _Pki
) -> None:
    # The server's certificate says meshlet-peer; a client expecting another name
    # must not talk to it (the SAN, not the dialled IP, is what is checked).
    wrong_name = PeerTls(pki.client.cert_file, pki.client.key_file, pki.ca_file,
                         server_name="not-meshlet")
    with pytest.raises(PeerUnreachable):
        await _ask(server_address, wrong_name)


def test_from_paths_all_empty_is_off() -> None:
    assert PeerTls.from_paths(None, None, None) is None
    assert PeerTls.from_paths("", "", "") is None


def test_from_paths_names_what_is_missing(pki: _Pki) -> None:
    with pytest.raises(ValueError, match=r"missing: key, CA certificate"):
        PeerTls.from_paths(pki.client.cert_file, "", None)
    with pytest.raises(ValueError, match=r"missing: certificate$"):
        PeerTls.from_paths(None, pki.client.key_file, pki.ca_file)


def test_from_paths_rejects_unreadable_or_non_pem(pki: _Pki, tmp_path: Path) -> None:
    absent = tmp_path / "absent.pem"
    with pytest.raises(ValueError, match=rf"key {absent}: cannot read"):
        PeerTls.from_paths(pki.client.cert_file, absent, pki.ca_file)
    junk = write_pem(tmp_path / "junk.pem", b"not a certificate")
    with pytest.raises(ValueError, match=rf"CA certificate {junk}: not a PEM file"):
        PeerTls.from_paths(pki.client.cert_file, pki.client.key_file, junk)


def test_from_paths_keeps_the_paths(pki: _Pki) -> None:
    tls = PeerTls.from_paths(str(pki.client.cert_file), str(pki.client.key_file),
                             str(pki.ca_file))
    assert tls == PeerTls(pki.client.cert_file, pki.client.key_file, pki.ca_file)
