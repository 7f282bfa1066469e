"""Sign and verify version directories with OpenSSF model signing (``model_signing``).

The signature, ``model.sig``, lives inside the signed directory, so it is passed to the library as an
ignored path (the library does not exclude it by itself). By the library's design, paths starting with
``.git`` are never hashed.

The library decides whether a signature verifies; every exception it raises means "not verified".
Its messages are not meant for people (a file-by-file difference arrives as a Python list repr), so
the reason shown is built from values instead: the signature bundle's key hint and signed file
digests (a Sigstore bundle whose DSSE payload is an in-toto statement listing every file), compared
with the public key given and with the directory as ``model_signing.hashing`` hashes it now.

A version may also carry an attestation, ``attestation.intoto.jsonl``: an in-toto Statement v1 in a
DSSE envelope signed with the same EC key, whose subjects are the version's files with their SHA-256
and whose predicate is what the export measured (parity per artifact and output). It is written before
``model.sig``, so the signature covers it too. :func:`verify` checks it after ``model.sig``: the
envelope's signature over the DSSE pre-authentication encoding, and every subject against its file.
Versions exported before attestations existed verify as before, reported as "no attestation".
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

# in-toto Statement v1 in a DSSE envelope, one envelope per line (the in-toto "jsonl" bundle convention).
ATTESTATION_FILE = "attestation.intoto.jsonl"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_ATTESTATION_BYTES = 16 << 20
# Files never listed as subjects: the signature (written after the attestation) and the attestation itself.
NOT_SUBJECTS = (SIGNATURE_FILE, ATTESTATION_FILE)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttestationCheck:
    """What ``attestation.intoto.jsonl`` proves about a version (``present`` False: there is none)."""

    present: bool
    ok: bool
    reason: str = ""
    predicate_type: str = ""
    predicate: dict[str, Any] | None = None
    subjects: int = 0


@dataclass(frozen=True)
class VerifyResult:
    directory: Path
    ok: bool
    reason: str = ""
    attestation: AttestationCheck | None = None


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
    key = public_key if public_key is not None and not sigstore_identity and not certificate_chain else None
    if key is None and certificate_chain:
        key = _leaf_certificate_key(signature)
    attestation = check_attestation(directory, key)
    if attestation.present and not attestation.ok:
        return VerifyResult(directory, False, f"attestation: {attestation.reason}", attestation)
    return VerifyResult(directory, True, attestation=attestation)


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


# --- attestation: DSSE envelope over an in-toto Statement v1 -----------------------------------------

def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers (DSSE spec, protocol.md)."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def _ec_hash(curve: Any) -> Any:
    from cryptography.hazmat.primitives import hashes

    # The hash model_signing pairs with each curve (P-256: SHA-256, P-384: SHA-384, P-521: SHA-512).
    return {256: hashes.SHA256(), 384: hashes.SHA384()}.get(curve.key_size, hashes.SHA512())


def load_private_key(key: Path, password: str | bytes | None = None) -> Any:
    """An EC private key from a PEM file; TfshipError with a readable reason otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not Path(key).is_file():
        raise UsageError(f"{key}: private key file not found")
    try:
        private = serialization.load_pem_private_key(Path(key).read_bytes(), password=_password_bytes(password))
    except Exception as exc:
        text = first_line(exc)
        hint = " (wrong or missing password?)" if "password" in text.lower() or "decrypt" in text.lower() else ""
        raise TfshipError(f"{key}: cannot use this private key: {text}{hint}") from exc
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise TfshipError(f"{key}: cannot use this private key: model signing needs an EC key (P-256, P-384 or P-521)")
    return private


def key_id(public_key: Any) -> str:
    """SHA-256 of the SubjectPublicKeyInfo PEM, in hex: the same hint model_signing stores in model.sig."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def sign_envelope(statement: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """A DSSE envelope of ``statement`` signed with an EC private key (ECDSA, DER signature)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode("utf-8")
    signature = private_key.sign(pae(DSSE_PAYLOAD_TYPE, payload), ec.ECDSA(_ec_hash(private_key.curve)))
    return {"payloadType": DSSE_PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": [{"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}]}


def subjects_of(directory: Path) -> list[dict[str, Any]]:
    """Every file of a version as in-toto resource descriptors (name relative to the version, sha256)."""
    directory = Path(directory)
    found = []
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if not path.is_file() or name in NOT_SUBJECTS or any(part.startswith(".git") for part in path.relative_to(directory).parts):
            continue
        found.append({"name": name, "digest": {"sha256": _sha256(path)}})
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_attestation(directory: Path, statement: dict[str, Any], key: Path, password: str | bytes | None = None) -> Path:
    """Sign ``statement`` with ``key`` and write it as ``directory/attestation.intoto.jsonl``."""
    envelope = sign_envelope(statement, load_private_key(key, password))
    target = Path(directory) / ATTESTATION_FILE
    target.write_text(json.dumps(envelope, sort_keys=True) + "\n", encoding="utf-8")
    return target


def _leaf_certificate_key(signature: Path) -> Any:
    """The signing certificate's public key from a certificate-chain bundle (model_signing checked the chain)."""
    from cryptography import x509

    try:
        material = json.loads(signature.read_bytes())["verificationMaterial"]
        chain = material.get("x509CertificateChain", {}).get("certificates") or [material["certificate"]]
        return x509.load_der_x509_certificate(base64.b64decode(chain[0]["rawBytes"])).public_key()
    except Exception:  # not a certificate bundle: the attestation check then reports it cannot check
        log.debug("no certificate in %s", signature, exc_info=True)
        return None


def _verify_envelope(envelope: dict[str, Any], public_key: Any) -> str:
    """Empty when one of the envelope's signatures verifies with ``public_key``, else the reason."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    if envelope.get("payloadType") != DSSE_PAYLOAD_TYPE:
        return f"payload type {envelope.get('payloadType')!r} is not {DSSE_PAYLOAD_TYPE}"
    payload = base64.b64decode(envelope["payload"], validate=True)
    message = pae(DSSE_PAYLOAD_TYPE, payload)
    signatures = envelope.get("signatures") or []
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return "the attestation can be checked only with an EC public key"
    for entry in signatures:
        try:
            public_key.verify(base64.b64decode(entry["sig"], validate=True), message, ec.ECDSA(_ec_hash(public_key.curve)))
            return ""
        except (InvalidSignature, ValueError, KeyError, TypeError, binascii.Error):
            continue
    ours = key_id(public_key)
    if signatures and all(isinstance(e, dict) and e.get("keyid") and e.get("keyid") != ours for e in signatures):
        return "signed with another key: the attestation's key does not match the public key given"
    return "its signature does not verify (the attestation was altered, or signed with another key)"


def _check_subjects(directory: Path, statement: dict[str, Any]) -> tuple[str, int]:
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        return "the statement lists no subjects", 0
    listed: dict[str, str] = {}
    for subject in subjects:
        name, digest = str(subject.get("name", "")), str((subject.get("digest") or {}).get("sha256", ""))
        if not name or not digest or name.startswith("/") or ".." in Path(name).parts:
            return f"subject {name!r} is not a file of this version with a sha256 digest", 0
        listed[name] = digest
    current = {s["name"]: s["digest"]["sha256"] for s in subjects_of(directory)}
    changed = sorted(n for n in listed.keys() & current.keys() if listed[n] != current[n])
    missing = sorted(listed.keys() - current.keys())
    added = sorted(current.keys() - listed.keys())
    sentences = []
    for names, what in ((changed, "changed since the attestation"), (missing, "missing since the attestation"),
                        (added, "not covered by the attestation")):
        if names:
            sentences.append(f"{'file' if len(names) == 1 else 'files'} {what}: {_names(names)}")
    return "; ".join(sentences), len(listed)


def check_attestation(directory: Path, public_key: Path | Any | None) -> AttestationCheck:
    """Check ``attestation.intoto.jsonl`` of a version; ``present`` is False when there is none."""
    from cryptography.hazmat.primitives import serialization

    path = Path(directory) / ATTESTATION_FILE
    if not path.is_file():
        return AttestationCheck(present=False, ok=True, reason="no attestation")
    if public_key is None:
        return AttestationCheck(present=True, ok=True, reason="not checked (keyless signature: no public key to check it with)")
    try:
        key = (serialization.load_pem_public_key(Path(public_key).read_bytes())
               if isinstance(public_key, (str, Path)) else public_key)
    except (OSError, ValueError, TypeError) as exc:
        return AttestationCheck(present=True, ok=False, reason=f"cannot read the public key: {first_line(exc)}")
    try:
        if path.stat().st_size > MAX_ATTESTATION_BYTES:
            return AttestationCheck(present=True, ok=False, reason=f"{ATTESTATION_FILE} is larger than {MAX_ATTESTATION_BYTES} bytes")
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        envelopes = [json.loads(line) for line in lines]
        if not envelopes or not all(isinstance(e, dict) for e in envelopes):
            raise ValueError("no envelope")
        checked = AttestationCheck(present=True, ok=True)
        for envelope in envelopes:
            problem = _verify_envelope(envelope, key)
            if problem:
                return AttestationCheck(present=True, ok=False, reason=problem)
            statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
            if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
                return AttestationCheck(present=True, ok=False, reason=f"the payload is not an in-toto statement ({STATEMENT_TYPE})")
            problem, count = _check_subjects(Path(directory), statement)
            if problem:
                return AttestationCheck(present=True, ok=False, reason=problem)
            predicate = statement.get("predicate")
            checked = AttestationCheck(present=True, ok=True, predicate_type=str(statement.get("predicateType", "")),
                                       predicate=predicate if isinstance(predicate, dict) else None, subjects=count)
        return checked
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        log.debug("unreadable attestation in %s", directory, exc_info=True)
        return AttestationCheck(present=True, ok=False, reason=f"{ATTESTATION_FILE} is damaged (not DSSE envelopes tfship can read)")
