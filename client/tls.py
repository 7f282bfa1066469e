"""Why a TLS connection to a server fails, in one line a person can act on.

gRPC reports a refused handshake as UNAVAILABLE ("Ssl handshake failed ... CERTIFICATE_VERIFY_FAILED"),
or, while it keeps retrying, only as a deadline: it never says which certificate was refused or why.
``tls_problem`` makes one handshake of its own with the same certificates (Python's ``ssl``, ALPN
``h2`` as gRPC offers) and names the cause: the server's certificate not signed by the given CA,
expired, for another name; or our client certificate refused (missing, expired, unknown CA).
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import tempfile
from pathlib import Path

from cryptography import x509

# Alerts a server sends when it refuses our certificate (OpenSSL's reason names, as ssl.SSLError.reason).
_CLIENT_CERT_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it has expired",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "none was sent (give --private-key and --certificate-chain)",
    "TLSV1_ALERT_UNKNOWN_CA": "it is not signed by a CA the server trusts",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server calls it bad (expired, not yet valid, or not signed by a CA it trusts)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the server could not verify it",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the handshake failed (no client certificate, or one the server refuses)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "it has been revoked",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the server does not support its type",
}


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def tls_problem(target: str, *, root_certificates: bytes | None, private_key: bytes | None = None,
                certificate_chain: bytes | None = None, server_name: str | None = None,
                timeout: float = 5.0) -> str | None:
    """A one-line reason why a TLS connection to ``target`` with these certificates fails, or None.

    None also when the reason is not about certificates (nothing listening, a timeout): gRPC's own
    message says that well enough.
    """
    host, port = _split(target)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=root_certificates.decode("ascii", "replace") if root_certificates else None)
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="tfship-tls-") as folder:
        if private_key and certificate_chain:
            # ssl loads a client certificate only from files: private ones, removed on return.
            key_path, cert_path = Path(folder) / "key.pem", Path(folder) / "cert.pem"
            for path, data in ((key_path, private_key), (cert_path, certificate_chain)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            try:
                context.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as exc:
                return f"--private-key and --certificate-chain do not form a usable client certificate ({exc.reason or exc})"
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError:
            return None
        name = server_name or host
        try:
            with raw, context.wrap_socket(raw, server_hostname=name) as tls:
                # With TLS 1.3 the server judges our certificate after the handshake completed on our
                # side: its verdict (an alert, or its first HTTP/2 frame: SETTINGS) comes with the first read.
                tls.settimeout(min(timeout, 2.0))
                first = tls.recv(1)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or str(exc)
            if "expired" in reason:
                until = _server_not_after(host, port, name, timeout)
                return (f"TLS to {target}: the server's certificate has expired{until}; "
                        f"the server needs a renewed certificate")
            if "Hostname mismatch" in reason or "IP address mismatch" in reason:
                return f"TLS to {target}: the server's certificate is not for '{name}' ({reason}); give --server-name with a name it has"
            return (f"TLS to {target}: the server's certificate is not trusted ({reason}): "
                    f"--root-certificates must be the CA that signed it")
        except ssl.SSLError as exc:
            cause = _CLIENT_CERT_ALERTS.get(exc.reason or "")
            if cause:
                return f"TLS to {target}: the server refused our client certificate: {cause}"
            if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
                return f"TLS to {target}: the server does not speak TLS there ({exc.reason}); drop the TLS options or use its TLS port"
            return f"TLS to {target}: handshake failed ({exc.reason or exc})"
        except OSError:
            return None
    if first:
        return None
    # The server hung up right after the handshake without a word: gRPC's servers (BoringSSL) refuse a
    # client certificate so, sending no alert. Say what we can tell from our side.
    if not (private_key and certificate_chain):
        return (f"TLS to {target}: the server closed the connection after the handshake: it requires a client "
                f"certificate (mTLS): give --private-key and --certificate-chain")
    return f"TLS to {target}: the server refused our client certificate (--certificate-chain): {_client_cert_doubt(certificate_chain)}"


def _when(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _client_cert_doubt(chain: bytes) -> str:
    """What is wrong with our certificate as far as we can see without the server's CA."""
    try:
        cert = x509.load_pem_x509_certificate(chain)
    except ValueError:
        return "it is not a PEM certificate"
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        return f"it expired on {_when(cert.not_valid_after_utc)}"
    if cert.not_valid_before_utc > now:
        return f"it is not valid before {_when(cert.not_valid_before_utc)}"
    return f"it is not signed by a CA the server trusts (issuer: {cert.issuer.rfc4514_string()})"


def _server_not_after(host: str, port: int, name: str, timeout: float) -> str:
    """' on DATE' from the server's certificate read without verifying it (only to name the date), else ''."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
        if not der:
            return ""
        return f" on {_when(x509.load_der_x509_certificate(der).not_valid_after_utc)}"
    except (OSError, ValueError):
        return ""
