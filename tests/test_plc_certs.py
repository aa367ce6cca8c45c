"""``rtvp_edge.messaging.plc.certs``: the self-signed OPC UA application certificates hold what OPC UA requires (the
application URI in subjectAltName, the right extended key usage), the key matches and is private; the
command line writes both files."""

from __future__ import annotations

import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from rtvp_edge.messaging.plc import certs


def load(cert_path, key_path):
    cert = x509.load_der_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return cert, key


def test_server_certificate_holds_uri_hosts_and_server_auth(tmp_path):
    cert_path, key_path = certs.make_certificate(
        tmp_path / "out", "srv", "urn:plant:vision", server=True, hosts=("vision-1", "localhost"), days=30
    )
    assert (cert_path.name, key_path.name) == ("srv.der", "srv.key.pem")
    cert, key = load(cert_path, key_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:plant:vision"]
    assert san.get_values_for_type(x509.DNSName) == ["vision-1", "localhost"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH not in eku
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31
    assert cert.subject == cert.issuer  # self-signed
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_client_certificate_has_client_auth(tmp_path):
    cert, _ = load(*certs.make_certificate(tmp_path, "plc", "urn:plant:plc", server=False))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH not in eku


def test_command_line_writes_default_names(tmp_path, capsys):
    out = tmp_path / "c"
    assert (
        certs.main(["--out", str(out), "--uri", "urn:rtvp-edge:server", "--server", "--host", "edge-7"]) == 0
    )
    assert (
        f"wrote {out / 'rtvp-edge-server.der'} and {out / 'rtvp-edge-server.key.pem'}"
        in capsys.readouterr().out
    )
    cert, _ = load(out / "rtvp-edge-server.der", out / "rtvp-edge-server.key.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["edge-7"]
    assert certs.main(["--out", str(out), "--uri", "urn:x:plc"]) == 0
    assert (out / "rtvp-edge-client.der").is_file()
