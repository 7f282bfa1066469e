"""tfship command line. Commands build result values; tfship.render prints them.

Heavy imports (tensorflow) happen inside the commands that need them, so ``tfship --help`` and the
client commands start fast.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tfship import render
from tfship.core.errors import EXIT_ERROR, TfshipError, UsageError

log = logging.getLogger("tfship")


class _State:
    debug = False


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("tfship").setLevel(level)
    for noisy in ("tensorflow", "absl", "tf2onnx", "h5py", "keras"):
        logging.getLogger(noisy).setLevel(logging.ERROR if verbose < 2 else logging.INFO)


def command(name: str, human: Callable[[Any, Any], None] | None = None):
    """Wrap a command: run it, render its result (table or JSON envelope), map errors to exit codes.

    The wrapped function returns ``(data, exit_code)`` or ``data`` (exit code 0).
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, json_output: bool = False, **kwargs):
            try:
                outcome = fn(*args, **kwargs)
            except TfshipError as exc:
                _fail(name, exc.message, exc.exit_code, json_output)
            except click.exceptions.Exit:
                raise
            except click.ClickException:
                raise
            except KeyboardInterrupt:
                _fail(name, "interrupted", 130, json_output)
            except Exception as exc:  # a bug or an unexpected library failure
                if _State.debug:
                    traceback.print_exc()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                _fail(name, f"unexpected {type(exc).__name__}: {first[:300]} (rerun with --debug for the traceback)", EXIT_ERROR, json_output)
            data, code = outcome if isinstance(outcome, tuple) else (outcome, 0)
            if json_output:
                render.print_json(render.envelope(name, code == 0, code, data))
            elif human is not None:
                human(render.stdout_console(), data)
            sys.exit(code)

        wrapper = click.option("--json", "json_output", is_flag=True, help="Print one JSON document on stdout.")(wrapper)
        return wrapper

    return decorate


def _fail(name: str, message: str, code: int, json_output: bool):
    if _State.debug and sys.exc_info()[0] is not None and code != 130:
        traceback.print_exc()
    if json_output:
        render.print_json(render.envelope(name, False, code, None, [message]))
    else:
        click.echo(f"tfship {name}: error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for library logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="tfship", prog_name="tfship")
def cli(verbose: int, quiet: bool, debug: bool) -> None:
    """Export Keras models to signed SavedModel, TFLite and ONNX, serve them with TensorFlow Serving,
    and validate that the server answers what the original model computes.

    Exit codes: 0 ok, 1 error, 2 usage, 3 predictions do not match, 4 server not reachable or model
    not available, 5 signature missing or invalid.
    """
    _State.debug = debug
    _quiet_tensorflow()
    _configure_logging(verbose, quiet)


def _split(values: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (values or "").split(",") if v.strip())


def _tolerances(values: tuple[str, ...], flag: str) -> dict[str, float]:
    result = {}
    for value in values:
        label, _, number = value.rpartition("=") if "=" in value else ("*", "", value)
        try:
            result[label or "*"] = float(number)
        except ValueError:
            raise UsageError(f"{flag} {value!r}: expected a number, or FORMAT=number (e.g. tflite:float16=1e-2)") from None
    return result


# --- export ---------------------------------------------------------------------------------------

def _render_export(console, data) -> None:
    rows = []
    for p in data["parity"]:
        rows.append([p["artifact"], p["status"], render.fmt_float(p["max_abs"]),
                     "-" if p["top1_agreement"] is None else f"{p['top1_agreement']:.4f}", p["error"][:120]])
    console.print(render.table(f"{data['name']} version {data['version']} -> {data['directory']}",
                               ["artifact", "parity", "max abs err", "top-1", "detail"], rows))
    for notice in data["notices"]:
        console.print(f"notice: {notice}")
    console.print("signed: yes (model.sig)" if data["signed"] else "signed: no (pass --sign-key to sign)")


@cli.command("export")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Model name in the repository (models/NAME/VERSION).")
@click.option("--repo", type=click.Path(path_type=Path), default=Path("models"), show_default=True, help="Model repository folder.")
@click.option("--version", "version", type=int, help="Version number to write (default: the next one). Never overwrites.")
@click.option("--formats", default="savedmodel,tflite,onnx", show_default=True, help="Comma-separated artifacts to produce.")
@click.option("--tflite-quantize", default="", help="Extra TFLite variants: float16,dynamic,int8.")
@click.option("--calibration", type=click.Path(path_type=Path), help="Inputs (.npz) to calibrate int8 quantization.")
@click.option("--samples", type=click.Path(path_type=Path), help="Inputs (.npz, keys = input names) for the parity check.")
@click.option("--num-samples", type=click.IntRange(1, 100_000), default=32, show_default=True, help="Generated samples when --samples is not given.")
@click.option("--architecture", help="With a weights-only SOURCE: arch.json (model.to_json()) or module:build_fn.")
@click.option("--custom-objects", help="module.py or pkg.module defining the model's custom layers.")
@click.option("--trust-code", is_flag=True, help="Allow code stored in the model file (Lambda layers) to run.")
@click.option("--signature", default="serving_default", show_default=True, help="Signature of a SavedModel SOURCE to export.")
@click.option("--sign-key", type=click.Path(path_type=Path), envvar="TFSHIP_SIGN_KEY", help="Private key to sign the version [env TFSHIP_SIGN_KEY].")
@click.option("--sign-key-password", envvar="TFSHIP_SIGN_KEY_PASSWORD", help="Password of the signing key [env TFSHIP_SIGN_KEY_PASSWORD].")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (9-18).")
@click.option("--atol", multiple=True, help="Absolute tolerance: VALUE for every artifact, or FORMAT=VALUE (repeatable).")
@click.option("--rtol", multiple=True, help="Relative tolerance: VALUE for every artifact, or FORMAT=VALUE (repeatable).")
@click.option("--strict", is_flag=True, help="Fail when any requested format cannot be produced.")
@click.option("--allow-mismatch", is_flag=True, help="Keep the version even when an artifact does not match the original.")
@command("export", _render_export)
def export_cmd(source, name, repo, version, formats, tflite_quantize, calibration, samples, num_samples, architecture,
               custom_objects, trust_code, signature, sign_key, sign_key_password, opset, atol, rtol, strict, allow_mismatch):
    """Export SOURCE (.keras, .h5, SavedModel directory, or weights with --architecture) as a new version."""
    from tfship.exporter import ExportOptions, export

    options = ExportOptions(
        source=source, name=name, repo=repo, version=version, formats=_split(formats),
        tflite_quantize=_split(tflite_quantize), calibration=calibration, samples=samples, num_samples=num_samples,
        architecture=architecture, custom_objects=custom_objects, trust_code=trust_code, sign_key=sign_key,
        sign_key_password=sign_key_password, opset=opset, strict=strict, allow_mismatch=allow_mismatch,
        atol=_tolerances(atol, "--atol"), rtol=_tolerances(rtol, "--rtol"), signature=signature,
    )
    result = export(options, progress=lambda message: log.info("export: %s", message))
    return result.to_dict()


# --- keys, sign, verify ---------------------------------------------------------------------------

@cli.group("keys")
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


@cli.command("sign")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--key", type=click.Path(path_type=Path), envvar="TFSHIP_SIGN_KEY", help="Private key (PEM) [env TFSHIP_SIGN_KEY].")
@click.option("--password", envvar="TFSHIP_SIGN_KEY_PASSWORD", help="Password of the private key.")
@click.option("--certificate", type=click.Path(path_type=Path), help="Signing certificate (certificate-chain signing).")
@click.option("--certificate-chain", type=click.Path(path_type=Path), multiple=True, help="Certificate chain files.")
@click.option("--sigstore", is_flag=True, help="Keyless signing with Sigstore (needs the network).")
@command("sign", lambda console, data: console.print(f"signed {data['directory']} -> {data['signature']}"))
def sign_cmd(directory, key, password, certificate, certificate_chain, sigstore):
    """Sign a version directory: writes DIRECTORY/model.sig over every file in it."""
    from tfship.core.signing import sign

    path = sign(directory, key=key, password=password, certificate=certificate,
                certificate_chain=tuple(certificate_chain), sigstore=sigstore)
    return {"directory": str(directory), "signature": str(path)}


def _render_verify(console, data) -> None:
    console.print(f"verified: {data['directory']}" if data["ok"] else f"NOT verified: {data['directory']}: {data['reason']}")


@cli.command("verify")
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
    data = {"directory": str(directory), "ok": result.ok, "reason": result.reason}
    if not result.ok:
        if not _State.debug:
            click.echo(f"tfship verify: {directory}: {result.reason}", err=True)
        return data, EXIT_SIGNATURE
    return data


def main() -> None:
    cli.main(prog_name="tfship")


