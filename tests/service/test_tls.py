"""TLS: the server presents its certificate; a client trusting it gets in, a plaintext one does not."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from memagent.client import Client, ClientError

from .conftest import ALICE, TOKENS, RunningServer

pytestmark = pytest.mark.timeout(60)


def _self_signed(folder) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls(tiny_engine, tmp_path):
    cert, key = _self_signed(tmp_path)
    running = RunningServer(tiny_engine, tmp_path / "data", tokens=TOKENS, tls_cert=cert, tls_key=key)
    try:
        with Client(running.address, ALICE, root_certificates=cert.read_bytes(), timeout=10) as client:
            assert client.create("secure").memory_id == "secure"
        with Client(running.address, ALICE, timeout=3) as plaintext, pytest.raises(ClientError) as err:
            plaintext.list()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()
