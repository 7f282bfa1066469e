"""Sign and verify version directories with OpenSSF model signing (``model_signing``).

The signature, ``model.sig``, lives inside the signed directory, so it is passed to the library as an
ignored path (the library does not exclude it by itself). By the library's design, paths starting with
``.git`` are never hashed. Its failures come as plain ValueError / InvalidSignature / JSONDecodeError /
FileNotFoundError whose text is often a Python list repr; every one of them means "not verified", and
is turned into a sentence here.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tfship.core.errors import SignatureError, TfshipError, UsageError

# The signature file sits inside the version it signs; model_signing is told to leave it out of the hash.
SIGNATURE_FILE = "model.sig"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyResult:
    directory: Path
    ok: bool
    reason: str = ""


def _hashing_config(directory: Path):
    from model_signing import hashing

    # Relative ignored paths are resolved against the model directory by model_signing.
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=True).set_allow_symlinks(False)


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None:
        return None
    return password if isinstance(password, bytes) else password.encode("utf-8")


def sign(directory: Path, *, key: Path | None = None, password: str | bytes | None = None,
         certificate: Path | None = None, certificate_chain: tuple[Path, ...] = (), sigstore: bool = False) -> Path:
    """Write ``directory/model.sig`` over every file in ``directory``."""
    from model_signing import signing

    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    config = signing.Config()
    if sigstore:
        config = config.use_sigstore_signer()
    elif key is None:
        raise UsageError("signing needs a private key (--key / --sign-key / TFSHIP_SIGN_KEY) or --sigstore")
    else:
        if not Path(key).is_file():
            raise UsageError(f"{key}: private key file not found")
        try:
            if certificate is not None:
                config = config.use_certificate_signer(private_key=key, signing_certificate=certificate,
                                                       certificate_chain=list(certificate_chain))
            else:
                # model_signing 1.1.1 types the password as str but the key loader wants bytes.
                config = config.use_elliptic_key_signer(private_key=key, password=_password_bytes(password))
        except Exception as exc:  # wrong password, not a PEM key, not an EC key
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            hint = " (wrong or missing password?)" if "password" in text.lower() or "decrypt" in text.lower() else ""
            raise TfshipError(f"{key}: cannot use this private key: {text}{hint}") from None
    target = directory / SIGNATURE_FILE
    try:
        config.set_hashing_config(_hashing_config(directory)).sign(directory, target)
    except (UsageError, SignatureError):
        raise
    except Exception as exc:
        target.unlink(missing_ok=True)
        raise SignatureError(f"{directory}: signing failed: {_readable(exc)}") from None
    return target


def verify(directory: Path, *, public_key: Path | None = None, certificate_chain: tuple[Path, ...] = (),
           sigstore_identity: str | None = None, sigstore_issuer: str | None = None) -> VerifyResult:
    """Check ``directory/model.sig``; never raises for a bad signature, returns the reason instead."""
    from model_signing import verifying

    directory = Path(directory).resolve()
    signature = directory / SIGNATURE_FILE
    if not directory.is_dir():
        return VerifyResult(directory, False, "not a directory")
    if not signature.is_file():
        return VerifyResult(directory, False, f"no signature ({SIGNATURE_FILE} is missing): sign it with 'tfship sign'")
    symlinks = [p for p in directory.rglob("*") if p.is_symlink()]
    if symlinks:
        return VerifyResult(directory, False, f"symbolic link in the model: {symlinks[0].relative_to(directory)}")
    config = verifying.Config()
    if sigstore_identity:
        config = config.use_sigstore_verifier(identity=sigstore_identity, oidc_issuer=sigstore_issuer or "")
    elif certificate_chain:
        config = config.use_certificate_verifier(certificate_chain=list(certificate_chain))
    elif public_key is not None:
        if not Path(public_key).is_file():
            raise UsageError(f"{public_key}: public key file not found")
        config = config.use_elliptic_key_verifier(public_key=public_key)
    else:
        raise UsageError("verification needs a public key (--public-key / TFSHIP_PUBLIC_KEY) or a certificate chain")
    try:
        config.set_hashing_config(_hashing_config(directory)).verify(directory, signature)
    except Exception as exc:  # every failure of the library means "not verified"
        return VerifyResult(directory, False, _readable(exc))
    return VerifyResult(directory, True)


def _readable(exc: BaseException) -> str:
    """A sentence from model_signing's exceptions (whose text may be a list repr of differences)."""
    name = type(exc).__name__
    text = str(exc).strip()
    if name == "InvalidSignature" or (not text and "Signature" in name):
        return "the signature does not match the public key (signed with another key, or the signature was altered)"
    if name == "JSONDecodeError" or "Expecting value" in text or "Unterminated string" in text:
        return "the signature file is damaged (not valid JSON): sign the model again"
    if isinstance(exc, FileNotFoundError):
        return f"file missing: {exc.filename or text}"
    changes = _parse_differences(text)
    if changes:
        return "; ".join(changes)
    if text.startswith("Key mismatch"):
        return "signed with another key: the signature's key does not match the public key given"
    if "signature" in text.lower() and ("verif" in text.lower() or "invalid" in text.lower()):
        return f"the signature does not verify: {text[:300]}"
    return f"{name}: {text[:300]}" if text else name


def _parse_differences(text: str) -> list[str]:
    """model_signing says 'Signature mismatch: [...]' with a list repr; name each file that differs."""
    if not text.startswith("Signature mismatch:"):
        return []
    try:
        items = ast.literal_eval(text.split(":", 1)[1].strip())
    except (ValueError, SyntaxError):
        return []
    messages = []
    for item in items if isinstance(items, (list, tuple)) else [items]:
        item = str(item)
        files = item.split(": ", 1)[1] if ": " in item else item
        if item.startswith("Extra files"):
            messages.append(f"file added since signing: {files}")
        elif item.startswith("Missing files"):
            messages.append(f"file missing since signing: {files}")
        elif item.startswith("Hash mismatch for"):
            match = re.match(r"Hash mismatch for '(.*?)'", item)
            messages.append(f"file changed since signing: {match.group(1) if match else item[:200]}")
        else:
            messages.append(item[:200])
    return messages


def generate_keys(out: Path, *, password: str | None = None, force: bool = False) -> tuple[Path, Path]:
    """EC P-256 private key (mode 0600, optionally encrypted) and its public key, in PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    private_path, public_path = out / "signing_key.pem", out / "signing_key.pub"
    if not force:
        existing = [p for p in (private_path, public_path) if p.exists()]
        if existing:
            raise UsageError(f"{existing[0]} already exists; pass --force to replace it (the old key is lost)")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = (serialization.BestAvailableEncryption(password.encode("utf-8")) if password
                  else serialization.NoEncryption())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(public_pem)
    return private_path, public_path
