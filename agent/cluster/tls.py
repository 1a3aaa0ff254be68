"""Optional mutual TLS on the peer port.

With TLS, every peer connection is authenticated both ways: the server presents
its certificate and requires one from the client, and each side accepts only
certificates signed by the cluster CA (``ca_file``). This is on top of the HMAC
sealing of ``agent.cluster.auth``, not instead of it: TLS adds confidentiality and
keeps hosts without a cluster certificate from reaching the handler at all.

Peers are dialled by IP (pod IPs change), so the client checks the server's
certificate against one fixed name, ``server_name`` (default ``meshlet-peer``),
not the address it dialled. **Every peer certificate must carry that name as a
DNS subject alternative name** (``DNS:meshlet-peer``); one certificate then serves
every pod, whatever its IP. The same certificate is presented as the client's.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

DEFAULT_SERVER_NAME = "meshlet-peer"

PathArg = str | PathLike[str] | None


@dataclass(frozen=True)
class PeerTls:
    """This node's certificate and key (PEM) and the cluster CA's certificate (PEM)."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    server_name: str = DEFAULT_SERVER_NAME
    """The name every peer certificate carries as a DNS SAN; checked instead of the IP."""

    @classmethod
    def from_paths(
        cls, cert: PathArg, key: PathArg, ca: PathArg, server_name: str = DEFAULT_SERVER_NAME
    ) -> PeerTls | None:
        """``None`` when all three are empty (TLS off); otherwise check that each is
        set and is a readable PEM file. Raises ``ValueError`` saying what is wrong."""
        given = {"certificate": cert, "key": key, "CA certificate": ca}
        missing = [name for name, path in given.items() if not path]
        if len(missing) == len(given):
            return None
        if missing:
            raise ValueError(
                f"peer TLS needs a certificate, a key and a CA certificate; missing: "
                f"{', '.join(missing)}"
            )
        paths = {name: Path(path) for name, path in given.items() if path}
        for name, path in paths.items():
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ValueError(f"peer TLS {name} {path}: cannot read: {e.strerror}") from None
            if b"-----BEGIN " not in data:
                raise ValueError(f"peer TLS {name} {path}: not a PEM file")
        return cls(paths["certificate"], paths["key"], paths["CA certificate"], server_name)

    def server_context(self) -> ssl.SSLContext:
        """For the peer port's listener: present our certificate, require the client's."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        context.load_verify_locations(cafile=self.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self) -> ssl.SSLContext:
        """For dialling peers: trust the CA only, present our certificate. Dial with
        ``server_hostname=self.server_name``: that name is checked, not the IP."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_cert_chain(self.cert_file, self.key_file)
        context.load_verify_locations(cafile=self.ca_file)
        return context
