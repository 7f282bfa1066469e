"""The verification gate: nothing unverified is served unless the user said --allow-unsigned."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tfship.core.errors import SignatureError, UsageError
from tfship.serving.config import scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionCheck:
    name: str
    version: int
    ok: bool
    reason: str = ""
    attested: bool = False


def check_repository(repo: Path, public_key: Path | None) -> list[VersionCheck]:
    from tfship.core.signing import verify

    results = []
    for name, versions in scan(repo).items():
        for version in versions:
            # verify() checks model.sig, then the version's attestation: a version whose attestation does not
            # match its files (or was signed by another key) fails here like a bad signature.
            outcome = verify(Path(repo) / name / str(version), public_key=public_key)
            attested = outcome.attestation is not None and outcome.attestation.present and outcome.attestation.ok
            results.append(VersionCheck(name, version, outcome.ok, outcome.reason, attested))
    return results


def gate(repo: Path, *, public_key: Path | None, allow_unsigned: bool, skip_invalid: bool) -> set[tuple[str, int]]:
    """Versions to leave out of the served config. Raises SignatureError when any fails and not skipping."""
    if allow_unsigned:
        log.warning("WARNING: --allow-unsigned: serving model versions WITHOUT checking their signatures. "
                    "Never do this outside development.")
        return set()
    if public_key is None:
        raise UsageError("serving verifies every model version first: pass --public-key KEY (or TFSHIP_PUBLIC_KEY), "
                         "or --allow-unsigned for development")
    if not Path(public_key).is_file():
        raise UsageError(f"{public_key}: public key file not found")
    results = check_repository(repo, public_key)
    failed = [r for r in results if not r.ok]
    if failed and not skip_invalid:
        lines = "; ".join(f"{r.name}/{r.version}: {r.reason}" for r in failed)
        raise SignatureError(f"refusing to serve: {len(failed)} model version(s) fail verification: {lines} "
                             f"(--skip-invalid serves the others)")
    for r in failed:
        log.warning("skipping %s version %d: %s", r.name, r.version, r.reason)
    for r in results:
        if r.ok and not r.attested:
            log.info("%s version %d: signature verified, no attestation (exported before attestations): parity not attested",
                     r.name, r.version)
    return {(r.name, r.version) for r in failed}


def verifier_for(public_key: Path | None) -> Callable[[Path], str | None] | None:
    """A load-time check for the local engine: returns the reason a version fails, or None."""
    if public_key is None:
        return None
    from tfship.core.signing import verify

    def check(path: Path) -> str | None:
        result = verify(path, public_key=public_key)
        return None if result.ok else result.reason

    return check
