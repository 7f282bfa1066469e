"""Validating a remote production endpoint over mutual TLS, as a release pipeline does: a private CA
signs the server's and the client's certificates; the server (the local engine, as TF Serving with
ssl_config: client_verify) refuses clients without one. Each failure is one line that names the cause."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from conftest import copy_repo, run_cli
from engine_helpers import start_engine

DAY = datetime.timedelta(days=1)


class Pki:
    """A CA and the certificates it issues, written as PEM files into a folder."""

    def __init__(self, folder: Path, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_path = self._write(f"{name}-ca.crt", self.cert.public_bytes(_pem()))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def issue(self, name: str, *, server: bool, expired: bool = False) -> tuple[Path, Path]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        before, after = (now - 10 * DAY, now - DAY) if expired else (now - datetime.timedelta(minutes=5), now + DAY)
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(before).not_valid_after(after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                                  critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        stem = f"{name}{'-expired' if expired else ''}"
        key_path = self._write(f"{stem}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        return key_path, self._write(f"{stem}.crt", builder.sign(self.key, hashes.SHA256()).public_bytes(_pem()))


def _pem():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Pki(folder, "prod"), Pki(folder, "elsewhere")
    return {"ca": ca, "other": other, "server": ca.issue("localhost", server=True),
            "expired_server": ca.issue("localhost", server=True, expired=True),
            "client": ca.issue("release-pipeline", server=False),
            "expired_client": ca.issue("release-pipeline", server=False, expired=True)}


def _engine(repo: Path, pki: dict, server: tuple[Path, Path]):
    from tfship.serving.local_engine import TlsOptions

    key, cert = server
    # TF Serving's SSLConfig: server_key, server_cert, custom_ca (the CA of client certificates) and
    # client_verify (tensorflow_serving/config/ssl_config.proto).
    return start_engine(repo, tls=TlsOptions(key.read_bytes(), cert.read_bytes(), custom_ca=pki["ca"].ca_path.read_bytes(),
                                             client_verify=True), models=["digits"])


@pytest.fixture(scope="module")
def mtls_engine(signed_repo, pki, tmp_path_factory):
    repo = copy_repo(signed_repo["repo"], tmp_path_factory.mktemp("mtls") / "models")
    engine = _engine(repo, pki, pki["server"])
    yield {"target": f"localhost:{engine.grpc_port}", "golden": repo / "digits" / "1" / "golden.npz"}
    engine.stop(grace=0)


def _validate(engine: dict, ca: Path, client: tuple[Path, Path] | None, *extra: object):
    tls = ["--root-certificates", ca] + (["--private-key", client[0], "--certificate-chain", client[1]] if client else [])
    return run_cli("validate", "--target", engine["target"], "--model", "digits", "--version", "1", "--golden", engine["golden"],
                   "--timeout", "10", *tls, *extra)


def test_validate_over_mtls_with_the_right_certificates(mtls_engine, pki, tmp_path):
    result = _validate(mtls_engine, pki["ca"].ca_path, pki["client"], "--junit", tmp_path / "junit.xml")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("PASS: digits at localhost:")
    assert 'failures="0"' in (tmp_path / "junit.xml").read_text()


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_wrong_ca_is_named_in_one_line(mtls_engine, pki, tmp_path):
    result = _validate(mtls_engine, pki["other"].ca_path, pki["client"], "--report", tmp_path / "report")
    assert result.exit_code == 4
    line = _one_line(result)
    assert line.startswith(f"tfship validate: error: TLS to {mtls_engine['target']}: the server's certificate is not trusted"), line
    assert "--root-certificates must be the CA that signed it" in line
    assert not (tmp_path / "report").exists()


def test_an_expired_client_certificate_is_named_in_one_line(mtls_engine, pki):
    result = _validate(mtls_engine, pki["ca"].ca_path, pki["expired_client"])
    assert result.exit_code == 4
    assert _one_line(result) == (f"tfship validate: error: TLS to {mtls_engine['target']}: the server refused our client certificate "
                                 f"(--certificate-chain): it expired on {_expiry(pki['expired_client'][1])}")


def _expiry(cert_path: Path) -> str:
    from cryptography import x509

    return f"{x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


def test_no_client_certificate_says_mtls_is_required(mtls_engine, pki):
    result = _validate(mtls_engine, pki["ca"].ca_path, None)
    assert result.exit_code == 4
    assert _one_line(result).endswith("it requires a client certificate (mTLS): give --private-key and --certificate-chain")


def test_an_expired_server_certificate_is_named_in_one_line(signed_repo, pki, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    engine = _engine(repo, pki, pki["expired_server"])
    try:
        result = _validate({"target": f"localhost:{engine.grpc_port}", "golden": repo / "digits" / "1" / "golden.npz"},
                           pki["ca"].ca_path, pki["client"])
    finally:
        engine.stop(grace=0)
    assert result.exit_code == 4
    line = _one_line(result)
    assert line == (f"tfship validate: error: TLS to localhost:{engine.grpc_port}: the server's certificate has expired on "
                    f"{_expiry(pki['expired_server'][1])}; the server needs a renewed certificate")


def test_the_client_reports_the_cause_when_a_call_fails_mid_session(mtls_engine, pki):
    """Not only the CLI's first handshake: a client's failed call names the certificate problem too."""
    from tfship.client.grpc_client import ServingClient
    from tfship.core.errors import ServerUnavailable

    with ServingClient(mtls_engine["target"], root_certificates=pki["other"].ca_path.read_bytes(), timeout=2) as client, \
            pytest.raises(ServerUnavailable) as raised:
        client.status("digits")
    assert "the server's certificate is not trusted" in raised.value.message and raised.value.exit_code == 4
