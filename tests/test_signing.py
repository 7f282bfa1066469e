"""Signed versions verify; every tamper case is refused with a readable reason by verify and by serve."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import copy_repo, run_cli


def test_keys_generate_private_mode_and_no_overwrite(tmp_path):
    result = run_cli("keys", "generate", "--out", tmp_path / "k")
    assert result.exit_code == 0, result.stderr
    private = tmp_path / "k" / "signing_key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    again = run_cli("keys", "generate", "--out", tmp_path / "k")
    assert again.exit_code == 2 and "--force" in again.stderr
    assert private.read_bytes() == before
    assert run_cli("keys", "generate", "--out", tmp_path / "k", "--force").exit_code == 0
    assert private.read_bytes() != before


def test_password_protected_key_signs(tmp_path, signed_repo):
    assert run_cli("keys", "generate", "--out", tmp_path / "k", "--password", "s3cret").exit_code == 0
    assert b"ENCRYPTED" in (tmp_path / "k" / "signing_key.pem").read_bytes()
    version = shutil.copytree(signed_repo["repo"] / "digits" / "2", tmp_path / "v")
    (version / "model.sig").unlink()
    wrong = run_cli("sign", version, "--key", tmp_path / "k" / "signing_key.pem", "--password", "nope")
    assert wrong.exit_code == 1 and "password" in wrong.stderr and not (version / "model.sig").exists()
    assert run_cli("sign", version, "--key", tmp_path / "k" / "signing_key.pem", "--password", "s3cret").exit_code == 0
    assert run_cli("verify", version, "--public-key", tmp_path / "k" / "signing_key.pub").exit_code == 0


def test_exported_version_verifies(signed_repo, keys):
    result = run_cli("verify", signed_repo["repo"] / "digits" / "1", "--public-key", keys["public"])
    assert result.exit_code == 0, result.stderr
    assert "verified" in result.stdout


def _flip_bit(v: Path) -> None:
    path = next((v / "variables").glob("variables.data*"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _swap(v: Path) -> None:
    a, b = v / "model.onnx", v / "model.tflite"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _resign_other_key(keys):
    def tamper(v: Path) -> None:
        (v / "model.sig").unlink()
        from tfship.core.signing import sign

        sign(v, key=keys["other_private"])
    return tamper


TAMPER = {
    "flipped bit in variables": (_flip_bit, "changed since signing: variables/variables.data"),
    "file added": (lambda v: (v / "extra.txt").write_text("hi"), "added since signing: extra.txt"),
    "file deleted": (lambda v: (v / "model.onnx").unlink(), "missing since signing: model.onnx"),
    "file renamed": (lambda v: (v / "model.onnx").rename(v / "model2.onnx"), "model2.onnx"),
    "two files swapped": (_swap, "changed since signing"),
    "manifest edited": (lambda v: (v / "manifest.json").write_text((v / "manifest.json").read_text().replace('"pass"', '"PASS"', 1)),
                        "changed since signing: manifest.json"),
    "truncated signature": (lambda v: (v / "model.sig").write_bytes((v / "model.sig").read_bytes()[:100]), "damaged"),
    "missing signature": (lambda v: (v / "model.sig").unlink(), "no signature"),
    "symlink inserted": (lambda v: os.symlink("/etc/hostname", v / "link"), "symbolic link"),
}


@pytest.mark.parametrize("case", sorted(TAMPER) + ["signed with another key", "wrong public key"])
def test_tampering_is_refused_by_verify_and_serve(case, signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    version = repo / "digits" / "1"
    public = keys["public"]
    if case == "signed with another key":
        _resign_other_key(keys)(version)
        expected = "another key"
    elif case == "wrong public key":
        public = keys["other_public"]
        expected = "another key"
    else:
        tamper, expected = TAMPER[case]
        tamper(version)
    result = run_cli("verify", version, "--public-key", public)
    assert result.exit_code == 5, result.stdout + result.stderr
    assert expected in result.stderr, result.stderr
    assert "[" not in result.stderr and "InvalidSignature" not in result.stderr  # not a list repr or a bare class name

    served = run_cli("serve", "up", "--repo", repo, "--engine", "local", "--public-key", public,
                     "--grpc-port", "0", "--rest-port", "0", "--detach")
    assert served.exit_code == 5
    assert "digits/1" in served.stderr and expected in served.stderr
    assert not (repo / ".tfship-run" / "engine.json").exists()


def test_skip_invalid_leaves_failing_versions_out_of_the_config(signed_repo, keys, tmp_path):
    from tfship.serving.config import read_model_server_config

    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    (repo / "digits" / "2" / "golden.npz").write_bytes(b"swapped")
    refused = run_cli("serve", "config", "--repo", repo, "--public-key", keys["public"], "--versions", "all")
    assert refused.exit_code == 5 and "digits/2" in refused.stderr
    result = run_cli("serve", "config", "--repo", repo, "--public-key", keys["public"], "--versions", "all", "--skip-invalid")
    assert result.exit_code == 0, result.stderr
    config = read_model_server_config(repo / "models.config")
    assert list(config.model_config_list.config[0].model_version_policy.specific.versions) == [1]


def test_serving_needs_a_key_or_allow_unsigned(signed_repo, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    result = run_cli("serve", "config", "--repo", repo)
    assert result.exit_code == 2 and "--public-key" in result.stderr and "--allow-unsigned" in result.stderr
    unsigned = run_cli("serve", "config", "--repo", repo, "--allow-unsigned")
    assert unsigned.exit_code == 0 and "WITHOUT checking" in unsigned.stderr


def test_certificate_chain_signing(signed_repo, tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject_name, key, issuer_name, issuer_key, ca):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_name)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)])).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("tfship test CA", ca_key, "tfship test CA", ca_key, True)
    leaf = certificate("model signer", leaf_key, "tfship test CA", ca_key, False)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    (tmp_path / "ca.pem").write_bytes(pem(ca))
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    (tmp_path / "leaf.key").write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    version = shutil.copytree(signed_repo["repo"] / "digits" / "2", tmp_path / "v")
    (version / "model.sig").unlink()
    signed = run_cli("sign", version, "--key", tmp_path / "leaf.key", "--certificate", tmp_path / "leaf.pem",
                     "--certificate-chain", tmp_path / "ca.pem")
    assert signed.exit_code == 0, signed.stderr
    verified = run_cli("verify", version, "--certificate-chain", tmp_path / "ca.pem")
    assert verified.exit_code == 0, verified.stderr
    assert "proven parity" in verified.stdout  # the attestation is checked with the signing certificate's key
    (version / "golden.npz").write_bytes(b"changed")
    tampered = run_cli("verify", version, "--certificate-chain", tmp_path / "ca.pem")
    assert tampered.exit_code == 5 and "changed since signing: golden.npz" in tampered.stderr


def test_sign_key_from_the_environment(digits_model, keys, tmp_path):
    repo = tmp_path / "models"
    result = run_cli("export", digits_model["keras"], "--name", "d", "--repo", repo, "--formats", "savedmodel",
                     env={"TFSHIP_SIGN_KEY": str(keys["private"])})
    assert result.exit_code == 0, result.stderr
    assert run_cli("verify", repo / "d" / "1", env={"TFSHIP_PUBLIC_KEY": str(keys["public"])}).exit_code == 0


def test_many_changes_are_named_in_one_readable_line(signed_repo, keys, tmp_path):
    version = shutil.copytree(signed_repo["repo"] / "digits" / "1", tmp_path / "v")
    for i in range(12):
        (version / f"extra{i:02d}.txt").write_text("x")
    (version / "golden.npz").write_bytes(b"changed")
    (version / "model.onnx").unlink()
    result = run_cli("verify", version, "--public-key", keys["public"])
    assert result.exit_code == 5
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "[" not in line
    assert "file changed since signing: golden.npz" in line
    assert "files added since signing: extra00.txt, extra01.txt" in line and "and 2 more" in line
    assert "file missing since signing: model.onnx" in line


def test_a_public_key_that_is_not_a_key_is_a_usage_error(signed_repo, tmp_path):
    (tmp_path / "key.pub").write_text("not a PEM key\n")
    result = run_cli("verify", signed_repo["repo"] / "digits" / "1", "--public-key", tmp_path / "key.pub")
    assert result.exit_code == 2
    assert f"{tmp_path / 'key.pub'}: cannot verify with it" in result.stderr and len(result.stderr.strip().splitlines()) == 1
