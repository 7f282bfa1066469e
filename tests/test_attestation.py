"""The attestation of a version: an in-toto statement in a DSSE envelope, checked by verify and by serve.

Oracles that are not our code: the DSSE pre-authentication encoding is rebuilt here from the DSSE
spec (protocol.md: ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``) and the envelope is also
verified with securesystemslib's DSSE implementation; the statement is parsed and validated by the
in-toto project's own ``in_toto_attestation`` Statement v1 binding; the ML-BOM is validated with
cyclonedx-python-lib's JSON schema validator.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from conftest import copy_repo, run_cli


def _sign(version: Path, key: Path) -> None:
    (version / "model.sig").unlink(missing_ok=True)
    result = run_cli("sign", version, "--key", key)
    assert result.exit_code == 0, result.stderr


@pytest.fixture()
def attested_repo(signed_repo, keys, tmp_path):
    """A copy of the digits repository whose version 1 (SavedModel, TFLite x3, ONNX) is signed with its attestation."""
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    _sign(repo / "digits" / "1", keys["private"])
    return repo


def _envelope(version: Path) -> dict:
    lines = (version / "attestation.intoto.jsonl").read_text().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_attestation_is_a_signed_in_toto_statement_over_every_file(attested_repo, keys):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from google.protobuf import json_format
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import SSlibKey

    version = attested_repo / "digits" / "1"
    envelope = _envelope(version)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    payload = base64.b64decode(envelope["payload"])
    # DSSE v1 PAE, written out from the spec, verified with the public key directly.
    pae = b"DSSEv1 28 application/vnd.in-toto+json " + str(len(payload)).encode() + b" " + payload
    public = serialization.load_pem_public_key(keys["public"].read_bytes())
    public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    # securesystemslib's DSSE agrees (it matches signatures to keys by keyid: ours is model_signing's key hint).
    keyid = envelope["signatures"][0]["keyid"]
    Envelope.from_dict(json.loads(json.dumps(envelope))).verify([SSlibKey.from_crypto(public, keyid=keyid)], 1)

    statement = json.loads(payload)
    Statement.copy_from_pb(json_format.ParseDict(statement, statement_pb2.Statement())).validate()
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    import hashlib

    files = sorted(p.relative_to(version).as_posix() for p in version.rglob("*")
                   if p.is_file() and p.name not in ("model.sig", "attestation.intoto.jsonl"))
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert sorted(subjects) == files
    for name in files:
        assert subjects[name] == hashlib.sha256((version / name).read_bytes()).hexdigest()
    labels = {s["name"]: s.get("annotations", {}).get("artifact") for s in statement["subject"]}
    assert labels["model.tflite"] == "tflite" and labels["model.int8.tflite"] == "tflite:int8" and labels["model.onnx"] == "onnx"

    predicate = statement["predicate"]
    manifest = json.loads((version / "manifest.json").read_text())
    assert predicate["source"]["digest"]["sha256"] == manifest["source"]["sha256"] != ""
    assert predicate["source"]["format"] == "keras.h5"
    assert predicate["libraries"]["tensorflow"] == manifest["libraries"]["tensorflow"]
    assert predicate["goldenSet"]["digest"]["sha256"] == subjects["golden.npz"]
    parity = {p["artifact"]: p for p in predicate["parity"]}
    assert set(parity) == {"savedmodel", "tflite", "tflite:float16", "tflite:int8", "onnx"}
    int8 = parity["tflite:int8"]
    assert int8["tolerance"]["min_top1"] == 0.99 and int8["outputs"][0]["name"] == "probabilities"
    recorded = next(p for p in manifest["parity"] if p["variant"] == "int8")["outputs"][0]
    assert int8["outputs"][0]["max_abs"] == recorded["max_abs"] and int8["outputs"][0]["top1_agreement"] == recorded["top1_agreement"]
    # model.sig, written after the attestation, covers it.
    (version / "attestation.intoto.jsonl").write_text((version / "attestation.intoto.jsonl").read_text() + "\n")
    result = run_cli("verify", version, "--public-key", keys["public"])
    assert result.exit_code == 5 and "changed since signing: attestation.intoto.jsonl" in result.stderr


def test_verify_prints_the_proven_parity(attested_repo, keys):
    version = attested_repo / "digits" / "1"
    result = run_cli("verify", version, "--public-key", keys["public"])
    assert result.exit_code == 0, result.stderr
    assert "verified" in result.stdout and "proven parity" in result.stdout
    for label in ("tflite:int8", "tflite:float16", "onnx", "probabilities", "top1>=0.99"):
        assert label in result.stdout, result.stdout
    data = json.loads(run_cli("verify", version, "--public-key", keys["public"], "--json").stdout)["data"]
    assert data["attestation"]["ok"] and data["attestation"]["subjects"] >= 8
    assert data["attestation"]["predicate_type"] == "https://tfship.dev/attestation/export/v1"


def test_a_signed_export_carries_its_attestation_and_ml_bom(signed_repo, keys):
    version = signed_repo["repo"] / "digits" / "1"
    assert (version / "attestation.intoto.jsonl").is_file() and (version / "bom.cdx.json").is_file()
    data = json.loads(run_cli("verify", version, "--public-key", keys["public"], "--json").stdout)["data"]
    assert data["attestation"]["ok"], data


def test_a_version_without_attestation_still_verifies(signed_repo, keys, tmp_path):
    from tfship.core import signing

    # A version signed the way earlier tfship releases signed: model.sig alone.
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    version = repo / "digits" / "1"
    (version / "attestation.intoto.jsonl").unlink()
    (version / "model.sig").unlink()
    signing.sign(version, key=keys["private"])
    result = run_cli("verify", version, "--public-key", keys["public"])
    assert result.exit_code == 0, result.stderr
    assert "no attestation" in result.stdout


def test_the_bom_is_signed_with_the_version(signed_repo, keys, tmp_path):
    repo = copy_repo(signed_repo["repo"], tmp_path / "models")
    version = repo / "digits" / "1"
    bom = json.loads((version / "bom.cdx.json").read_text())
    bom["metadata"]["component"]["name"] = "something-else"
    (version / "bom.cdx.json").write_text(json.dumps(bom))
    result = run_cli("verify", version, "--public-key", keys["public"])
    assert result.exit_code == 5, result.stdout


def _flip_tflite(version: Path) -> None:
    data = bytearray((version / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0x01
    (version / "model.tflite").write_bytes(bytes(data))


def _edit_parity(version: Path) -> None:
    """Claim a better int8 parity than measured, keeping the envelope's signature."""
    path = version / "attestation.intoto.jsonl"
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    for entry in statement["predicate"]["parity"]:
        for output in entry["outputs"]:
            output["max_abs"] = 0.0
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope) + "\n")


def _attest_with_other_key(keys):
    def tamper(version: Path) -> None:
        from tfship.exporter.attestation import attest

        attest(version, keys["other_private"])
    return tamper


def _resign_model_sig(keys, version: Path) -> None:
    """Re-sign model.sig only (as a holder of the key who did not re-attest would), so that only the attestation can tell."""
    from tfship.core.signing import sign

    (version / "model.sig").unlink()
    sign(version, key=keys["private"])


TAMPER = {
    "artifact byte flipped": (_flip_tflite, "changed since signing: model.tflite",
                              "attestation: file changed since the attestation: model.tflite"),
    "attestation edited": (_edit_parity, "changed since signing: attestation.intoto.jsonl",
                           "attestation: its signature does not verify"),
    "attestation by another key": (None, "changed since signing: attestation.intoto.jsonl",
                                   "attestation: signed with another key"),
    "file added": (lambda v: (v / "notes.txt").write_text("x"), "added since signing: notes.txt",
                   "attestation: file not covered by the attestation: notes.txt"),
    "attestation damaged": (lambda v: (v / "attestation.intoto.jsonl").write_text("{not json\n"),
                            "changed since signing: attestation.intoto.jsonl", "attestation.intoto.jsonl is damaged"),
}


@pytest.mark.parametrize("resigned", [False, True], ids=["model.sig as signed", "model.sig re-signed"])
@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampering_fails_verify_and_serve(case, resigned, attested_repo, keys):
    version = attested_repo / "digits" / "1"
    tamper, by_signature, by_attestation = TAMPER[case]
    (tamper or _attest_with_other_key(keys))(version)
    expected = by_signature
    if resigned:
        _resign_model_sig(keys, version)
        expected = by_attestation
    result = run_cli("verify", version, "--public-key", keys["public"])
    assert result.exit_code == 5, result.stdout + result.stderr
    assert expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "[" not in result.stderr

    served = run_cli("serve", "config", "--repo", attested_repo, "--public-key", keys["public"], "--versions", "all")
    assert served.exit_code == 5 and "digits/1" in served.stderr and expected in served.stderr, served.stderr
    assert not (attested_repo / "models.config").exists()


def test_gate_serves_attested_and_unattested_versions(attested_repo, keys):
    from tfship.core import signing
    from tfship.serving.gate import check_repository

    # Version 2 signed as earlier tfship releases signed: model.sig alone.
    (attested_repo / "digits" / "2" / "attestation.intoto.jsonl").unlink()
    (attested_repo / "digits" / "2" / "model.sig").unlink()
    signing.sign(attested_repo / "digits" / "2", key=keys["private"])
    checks = {c.version: c for c in check_repository(attested_repo, keys["public"])}
    assert checks[1].ok and checks[1].attested
    assert checks[2].ok and not checks[2].attested  # signed before attestations: served as before
    served = run_cli("serve", "config", "--repo", attested_repo, "--public-key", keys["public"], "--versions", "all")
    assert served.exit_code == 0, served.stderr


def test_sign_refuses_to_attest_a_swapped_artifact(signed_repo, keys, tmp_path):
    version = shutil.copytree(signed_repo["repo"] / "digits" / "1", tmp_path / "v")
    (version / "model.sig").unlink()
    (version / "attestation.intoto.jsonl").unlink()
    (version / "model.onnx").write_bytes((version / "model.onnx").read_bytes() + b"\0")
    result = run_cli("sign", version, "--key", keys["private"])
    assert result.exit_code == 5
    assert "model.onnx no longer match the digests the export measured" in result.stderr
    assert not (version / "model.sig").exists() and not (version / "attestation.intoto.jsonl").exists()


def test_ml_bom_describes_the_model_its_files_and_frameworks(signed_repo, keys, tmp_path):
    import hashlib
    from importlib import metadata

    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from tfship.exporter import mlbom

    version = shutil.copytree(signed_repo["repo"] / "digits" / "1", tmp_path / "v")
    path = mlbom.write(version)
    text = path.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    model = bom["metadata"]["component"]
    assert model["type"] == "machine-learning-model" and model["name"] == "digits" and model["version"] == "1"
    parameters = model["modelCard"]["modelParameters"]
    assert parameters["inputs"] == [{"format": "image: float32[-1,8,8,1]"}]
    assert parameters["outputs"] == [{"format": "probabilities: float32[-1,10]"}]
    metrics = {(m["slice"], m["type"]): m["value"] for m in model["modelCard"]["quantitativeAnalysis"]["performanceMetrics"]}
    assert metrics[("tflite:int8 output probabilities", "top-1 agreement with original")] == "1"
    files = {c["name"]: c["hashes"][0]["content"] for c in model["components"]}
    for name in ("model.tflite", "model.int8.tflite", "model.onnx", "saved_model.pb", "golden.npz"):
        assert files[name] == hashlib.sha256((version / name).read_bytes()).hexdigest(), name
    libraries = {c["name"]: c for c in bom["components"]}
    assert libraries["tensorflow"]["version"] == metadata.version("tensorflow")
    assert libraries["tensorflow"]["type"] == "framework" and libraries["tf2onnx"]["type"] == "library"
    assert libraries["tensorflow"]["purl"] == f"pkg:pypi/tensorflow@{metadata.version('tensorflow')}"
    depends = {d["ref"]: d.get("dependsOn", []) for d in bom["dependencies"]}
    assert {"pkg:tensorflow", "pkg:keras", "pkg:tf2onnx", "pkg:onnxruntime"} <= set(depends["model"])
    # Signed after the BOM is written: the attestation lists it, model.sig covers it.
    _sign(version, keys["private"])
    statement = json.loads(base64.b64decode(_envelope(version)["payload"]))
    assert "bom.cdx.json" in {s["name"] for s in statement["subject"]}
    assert run_cli("verify", version, "--public-key", keys["public"]).exit_code == 0
