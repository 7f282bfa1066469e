"""``tfship keys generate``, ``tfship sign``, ``tfship verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tfship import render
from tfship.command import State, command
from tfship.core.errors import UsageError


@click.group("keys")
def keys_group() -> None:
    """Signing keys."""


@keys_group.command("generate")
@click.option("--out", type=click.Path(path_type=Path), default=Path("keys"), show_default=True, help="Folder for the key pair.")
@click.option("--password", envvar="TFSHIP_SIGN_KEY_PASSWORD", help="Encrypt the private key with this password.")
@click.option("--force", is_flag=True, help="Replace an existing key pair (the old one is lost).")
@command("keys generate", lambda console, data: console.print(f"private key: {data['private_key']} (mode 0600)\npublic key:  {data['public_key']}"))
def keys_generate(out, password, force):
    """Write an EC P-256 key pair: OUT/signing_key.pem (private) and OUT/signing_key.pub."""
    from tfship.core.signing import generate_keys

    private, public = generate_keys(out, password=password, force=force)
    return {"private_key": str(private), "public_key": str(public)}


@click.command("sign")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--key", type=click.Path(path_type=Path), envvar="TFSHIP_SIGN_KEY", help="Private key (PEM) [env TFSHIP_SIGN_KEY].")
@click.option("--password", envvar="TFSHIP_SIGN_KEY_PASSWORD", help="Password of the private key.")
@click.option("--certificate", type=click.Path(path_type=Path), help="Signing certificate (certificate-chain signing).")
@click.option("--certificate-chain", type=click.Path(path_type=Path), multiple=True, help="Certificate chain files.")
@click.option("--sigstore", is_flag=True, help="Keyless signing with Sigstore (needs the network).")
@command("sign", lambda console, data: console.print(f"signed {data['directory']} -> {data['signature']}"))
def sign_cmd(directory, key, password, certificate, certificate_chain, sigstore):
    """Sign a version directory: writes DIRECTORY/model.sig over every file in it.

    A version with a manifest.json gets its attestation (attestation.intoto.jsonl, signed with the same
    key) first, so model.sig covers it.
    """
    from tfship.core.signing import sign
    from tfship.exporter import attestation

    attested = None
    if key is not None and not sigstore and Path(directory).is_dir() and attestation.has_manifest(directory):
        attested = attestation.attest(directory, key, password)
    path = sign(directory, key=key, password=password, certificate=certificate,
                certificate_chain=tuple(certificate_chain), sigstore=sigstore)
    return {"directory": str(directory), "signature": str(path), "attestation": str(attested) if attested else None}


def _render_verify(console: Any, data: dict[str, Any]) -> None:
    console.print(f"verified: {data['directory']}" if data["ok"] else f"NOT verified: {data['directory']}: {data['reason']}")
    attestation = data.get("attestation") or {}
    if not data["ok"]:
        return
    if not attestation.get("present"):
        console.print("no attestation (a version signed before tfship wrote attestations): parity is not attested")
        return
    if attestation.get("predicate") is None:
        console.print(f"attestation: {attestation.get('reason') or 'present'}")
        return
    console.print(f"attestation: signed, {attestation['subjects']} files match their digests; proven parity:")
    # One line per artifact and output: a table's columns would cut names and tolerances on a narrow terminal.
    for entry in attestation["predicate"].get("parity", []):
        tolerance = entry.get("tolerance") or {}
        limit = f"atol={tolerance.get('atol', '-')} rtol={tolerance.get('rtol', '-')}"
        if tolerance.get("min_top1") is not None:
            limit += f" top1>={tolerance['min_top1']}"
        if not entry.get("outputs"):
            console.print(f"  {entry.get('artifact', '?'):<16} {entry.get('status', '?'):<8} {entry.get('error', '')}")
        for output in entry.get("outputs") or []:
            top1 = output.get("top1_agreement")
            console.print(f"  {entry.get('artifact', '?'):<16} {entry.get('status', '?'):<8} {output.get('name', '-')}: "
                          f"max abs {render.fmt_float(output.get('max_abs'))}, max rel {render.fmt_float(output.get('max_rel'))}, "
                          f"top-1 {'-' if top1 is None else f'{top1:.4f}'} ({limit})")


def _attestation_data(check: Any) -> dict[str, Any] | None:
    if check is None:
        return None
    return {"present": check.present, "ok": check.ok, "reason": check.reason, "predicate_type": check.predicate_type,
            "subjects": check.subjects, "predicate": check.predicate}


@click.command("verify")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--public-key", type=click.Path(path_type=Path), envvar="TFSHIP_PUBLIC_KEY", help="Public key (PEM) [env TFSHIP_PUBLIC_KEY].")
@click.option("--certificate-chain", type=click.Path(path_type=Path), multiple=True, help="Verify a certificate-chain signature.")
@click.option("--sigstore-identity", help="Verify a Sigstore signature made by this identity.")
@click.option("--sigstore-issuer", help="OIDC issuer of the Sigstore identity.")
@command("verify", _render_verify)
def verify_cmd(directory, public_key, certificate_chain, sigstore_identity, sigstore_issuer):
    """Verify DIRECTORY/model.sig. Exit 0 when every file matches, 5 otherwise (with the reason)."""
    from tfship.core.errors import EXIT_SIGNATURE
    from tfship.core.signing import verify

    if not Path(directory).is_dir():
        raise UsageError(f"{directory}: not a directory")
    result = verify(directory, public_key=public_key, certificate_chain=tuple(certificate_chain),
                    sigstore_identity=sigstore_identity, sigstore_issuer=sigstore_issuer)
    data = {"directory": str(directory), "ok": result.ok, "reason": result.reason,
            "attestation": _attestation_data(result.attestation)}
    if not result.ok:
        if not State.debug:
            click.echo(f"tfship verify: {directory}: {result.reason}", err=True)
        return data, EXIT_SIGNATURE
    return data


COMMANDS = [keys_group, sign_cmd, verify_cmd]
