"""Self-signed OPC UA application certificates (for commissioning and tests).

A plant usually issues certificates from its own CA; until then ``make_certificate`` writes a self-signed
one with the application URI in its subjectAltName, as OPC UA requires (OPC 10000-6 6.2.2)::

    python -m rtvp_edge.messaging.plc.certs --out certs --uri urn:rtvp-edge:server --server
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID


def make_certificate(
    out_dir: str | Path,
    name: str,
    uri: str,
    server: bool,
    hosts: tuple[str, ...] = ("localhost",),
    days: int = 365,
) -> tuple[Path, Path]:
    """Write ``<name>.der`` (certificate) and ``<name>.key.pem`` (private key) into ``out_dir``.

    Args:
        name: file stem and common name.
        uri: the application URI (must equal ``plc.opcua.application_uri`` for the server, the client's
            application URI for a client).
        server: True for a server certificate (serverAuth), False for a client's (clientAuth).
        hosts: DNS names put in subjectAltName.
    Returns:
        (certificate path, private key path).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(h) for h in hosts]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = generate_self_signed_app_certificate(key, name, {}, sans, usage, days=days)
    cert_path, key_path = out / f"{name}.der", out / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="write a self-signed OPC UA application certificate")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--name", default=None, help="file stem / common name (default: rtvp-edge-server or -client)"
    )
    p.add_argument("--uri", required=True, help="application URI, e.g. urn:rtvp-edge:server")
    p.add_argument("--server", action="store_true", help="server certificate (default: client)")
    p.add_argument("--host", action="append", default=None, help="DNS name for subjectAltName (repeatable)")
    p.add_argument("--days", type=int, default=365)
    a = p.parse_args(argv)
    name = a.name or ("rtvp-edge-server" if a.server else "rtvp-edge-client")
    cert, key = make_certificate(
        a.out, name, a.uri, a.server, tuple(a.host or [socket.gethostname()]), a.days
    )
    print(f"wrote {cert} and {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
