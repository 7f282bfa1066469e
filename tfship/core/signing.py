"""Sign and verify version directories with OpenSSF model signing (``model_signing``).

The signature, ``model.sig``, lives inside the signed directory, so it is passed to the library as an
ignored path (the library does not exclude it by itself). By the library's design, paths starting with
``.git`` are never hashed.

The library decides whether a signature verifies; every exception it raises means "not verified".
Its messages are not meant for people (a file-by-file difference arrives as a Python list repr), so
the reason shown is built from values instead: the signature bundle's key hint and signed file
digests (a Sigstore bundle whose DSSE payload is an in-toto statement listing every file), compared
with the public key given and with the directory as ``model_signing.hashing`` hashes it now.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tfship.core.errors import SignatureError, TfshipError, UsageError, first_line

# The signature file sits inside the version it signs; model_signing is told to leave it out of the hash.
SIGNATURE_FILE = "model.sig"
# A bundle lists one digest per file: a few hundred bytes each. Refuse to parse anything far larger.
MAX_SIGNATURE_BYTES = 64 << 20
# How many file names one reason lists before it says "and N more".
MAX_NAMES = 10

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyResult:
    directory: Path
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class _SignedContent:
    """What a signature bundle says, read without trusting it: used only to explain a failed verification."""

    key_hint: str  # SHA-256 of the signing key's public PEM (key-based signing), else ""
    files: dict[str, str]  # signed file name -> hex digest; empty when the bundle does not list files


def _hashing_config() -> Any:
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
                config = config.use_elliptic_key_signer(private_key=key, password=_password_bytes(password))  # type: ignore[arg-type]
        except Exception as exc:  # wrong password, not a PEM key, not an EC key
            text = first_line(exc)
            hint = " (wrong or missing password?)" if "password" in text.lower() or "decrypt" in text.lower() else ""
            raise TfshipError(f"{key}: cannot use this private key: {text}{hint}") from exc
    target = directory / SIGNATURE_FILE
    try:
        config.set_hashing_config(_hashing_config()).sign(directory, target)
    except Exception as exc:
        target.unlink(missing_ok=True)
        raise SignatureError(f"{directory}: signing failed: {type(exc).__name__}: {first_line(exc)}") from exc
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
    signed = _read_signed_content(signature)
    if signed is None:
        return VerifyResult(directory, False, f"the signature file is damaged ({SIGNATURE_FILE} is not a signature "
                                              "bundle tfship can read): sign the model again")
    config = verifying.Config()
    try:
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
    except UsageError:
        raise
    except Exception as exc:  # not a PEM file, not an EC key, an unreadable certificate
        what = public_key if public_key is not None else ", ".join(map(str, certificate_chain)) or "the verifier"
        raise UsageError(f"{what}: cannot verify with it: {first_line(exc)}") from exc
    try:
        config.set_hashing_config(_hashing_config()).verify(directory, signature)
    except Exception as exc:  # every failure of the library means "not verified"
        log.debug("model_signing refused %s", directory, exc_info=True)
        return VerifyResult(directory, False, _reason(exc, directory, signed, public_key))
    return VerifyResult(directory, True)


def _read_signed_content(signature: Path) -> _SignedContent | None:
    """The key hint and file digests a signature bundle claims; None when it is not a readable bundle."""
    try:
        if signature.stat().st_size > MAX_SIGNATURE_BYTES:
            return None
        bundle = json.loads(signature.read_bytes())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"], validate=True))
        predicate = statement["predicate"]
        files = {}
        if predicate["serialization"]["method"] == "files":
            files = {str(r["name"]): str(r["digest"]) for r in predicate["resources"]}
        hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint", "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):  # JSONDecodeError is a ValueError
        return None
    return _SignedContent(str(hint), files)


def _public_key_hint(public_key: Path) -> str:
    """The hint model_signing stores for a key: SHA-256 of its SubjectPublicKeyInfo PEM, in hex."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES])
    return shown + (f" and {len(names) - MAX_NAMES} more" if len(names) > MAX_NAMES else "")


def _file_changes(directory: Path, signed: _SignedContent) -> list[str]:
    """Sentences naming each file added, missing or changed since signing (empty when none is found)."""
    if not signed.files:
        return []
    try:
        manifest = _hashing_config().hash(directory)
        current = {str(rd.identifier): rd.digest.digest_hex for rd in manifest.resource_descriptors()}
    except Exception:  # the directory cannot be hashed now: explain with the library's failure instead
        log.debug("hashing %s to explain a failed verification failed", directory, exc_info=True)
        return []
    added = sorted(current.keys() - signed.files.keys())
    missing = sorted(signed.files.keys() - current.keys())
    changed = sorted(name for name in current.keys() & signed.files.keys() if current[name] != signed.files[name])
    sentences = []
    for names, what in ((changed, "changed"), (added, "added"), (missing, "missing")):
        if names:
            sentences.append(f"{'file' if len(names) == 1 else 'files'} {what} since signing: {_names(names)}")
    return sentences


def _reason(exc: BaseException, directory: Path, signed: _SignedContent, public_key: Path | None) -> str:
    """One readable sentence for a failed verification, from values rather than the library's message."""
    from cryptography.exceptions import InvalidSignature

    if public_key is not None and signed.key_hint:
        try:
            other_key = signed.key_hint != _public_key_hint(public_key)
        except (OSError, ValueError, TypeError):
            other_key = False
        if other_key:
            return "signed with another key: the signature's key does not match the public key given"
    if isinstance(exc, InvalidSignature):
        return "the signature does not match the public key (signed with another key, or the signature was altered)"
    changes = _file_changes(directory, signed)
    if changes:
        return "; ".join(changes)
    if isinstance(exc, FileNotFoundError):
        return f"file missing: {exc.filename or first_line(exc)}"
    return f"the signature does not verify ({type(exc).__name__}: {first_line(exc)})"


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
