"""Where to join: static peer addresses plus the records of a DNS name.

A seed list is the static ``host:port`` entries (``--peers``) as given, then every
A/AAAA record of ``dns_name`` as ``ip:port`` (IPv6 as ``[ip]:port``). In Kubernetes
``dns_name`` is a headless Service, whose records are the ready pods; it is resolved
again on every call, so a join round that found nobody sees pods started since.

A DNS failure is not fatal (the Service may have no ready pods yet, or DNS may be
slow to start): it is logged and the static entries alone are returned.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``resolver(name, port) -> IP addresses`` of ``name``, in the resolver's order;
raises ``OSError`` (``socket.gaierror``) when the name does not resolve."""


def parse_peer(value: str) -> tuple[str, int]:
    """``"10.0.0.7:8034"`` -> ``("10.0.0.7", 8034)``; ``"[::1]:8034"`` -> ``("::1", 8034)``.

    Raises ``ValueError`` naming the entry for an empty host, a port outside
    1..65535, or an IPv6 address without brackets."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"peer {value!r}: expected host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"peer {value!r}: unclosed '[' in an IPv6 address")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"peer {value!r}: an IPv6 address goes in brackets, [addr]:port")
    if not host:
        raise ValueError(f"peer {value!r}: empty host")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"peer {value!r}: port must be a number in 1..65535")
    return host, int(port_text)


def format_peer(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve_seeds(
    static: Sequence[str],
    dns_name: str,
    port: int,
    resolver: Resolver | None = None,
) -> list[str]:
    """The seeds to join through now: ``static`` (validated, as given), then each
    address ``dns_name`` resolves to, on ``port``; duplicates dropped, order kept.

    Raises ``ValueError`` for a malformed static entry (see ``parse_peer``)."""
    for entry in static:
        parse_peer(entry)
    seeds = list(static)
    if dns_name:
        try:
            ips = await (resolver or _getaddrinfo)(dns_name, port)
        except OSError as e:
            log.warning("cluster: cannot resolve seeds name %s (%s); using the static seeds",
                        dns_name, e)
        else:
            seeds += [format_peer(ip, port) for ip in ips]
    return list(dict.fromkeys(seeds))


async def _getaddrinfo(name: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for _family, _type, _proto, _canon, sockaddr in infos]
