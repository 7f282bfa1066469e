"""``ServingClient``: a TensorFlow Serving gRPC client with the defaults production needs.

A deadline on every call; retries on UNAVAILABLE only, with exponential backoff inside the deadline
(through gRPC's own service-config ``retryPolicy``); TLS and mTLS; keepalive; a receive limit far
above gRPC's 4 MiB default (a batch of images overflows it); errors that keep the gRPC status code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from tfship.core import protos
from tfship.core.codec import dtype_name, to_ndarray, to_tensor_proto
from tfship.core.errors import RpcError, ServerUnavailable, UsageError
from tfship.core.signature import Signature, TensorSpec

MAX_MESSAGE_BYTES = 1 << 30  # TF Serving accepts about 2 GiB; 1 GiB keeps clear of int overflow
DEFAULT_TIMEOUT = 30.0


def _retry_service_config(attempts: int) -> str:
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": protos.PREDICTION_SERVICE}, {"service": protos.MODEL_SERVICE}],
            "retryPolicy": {
                "maxAttempts": max(2, min(attempts, 5)),
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    })


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error_code: str
    error_message: str

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "state": self.state, "error_code": self.error_code, "error_message": self.error_message}


class ServingClient:
    """Calls one TensorFlow Serving endpoint (``host:port``)."""

    def __init__(self, target: str, *, timeout: float = DEFAULT_TIMEOUT, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None, tls: bool | None = None,
                 server_name: str | None = None, retries: int = 5, keepalive_seconds: float = 30.0) -> None:
        if not target or ":" not in target:
            raise UsageError(f"--target {target!r}: expected HOST:PORT")
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _retry_service_config(retries)),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        use_tls = tls if tls is not None else bool(root_certificates or private_key or certificate_chain)
        if use_tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                                       certificate_chain=certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._predict = self._unary(protos.PREDICTION_SERVICE, "Predict", protos.PredictRequest, protos.PredictResponse)
        self._metadata = self._unary(protos.PREDICTION_SERVICE, "GetModelMetadata", protos.GetModelMetadataRequest, protos.GetModelMetadataResponse)
        self._status = self._unary(protos.MODEL_SERVICE, "GetModelStatus", protos.GetModelStatusRequest, protos.GetModelStatusResponse)

    def _unary(self, service: str, method: str, request_cls, response_cls):
        return self._channel.unary_unary(f"/{service}/{method}", request_serializer=request_cls.SerializeToString,
                                         response_deserializer=response_cls.FromString)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------------

    def _call(self, stub, request, method: str, timeout: float | None):
        """One call under one deadline. UNAVAILABLE (server down, restarting, overloaded) is retried
        with exponential backoff until the deadline; every other status is final."""
        deadline = time.monotonic() + (timeout or self.timeout)
        backoff = 0.05
        unavailable = ""
        while True:
            remaining = deadline - time.monotonic()
            try:
                return stub(request, timeout=max(remaining, 0.001), wait_for_ready=False)
            except grpc.RpcError as exc:
                code = exc.code().name if exc.code() is not None else "UNKNOWN"
                details = exc.details() or ""
                if code == "UNAVAILABLE":
                    unavailable = details or "connection refused"
                    remaining = deadline - time.monotonic()
                    if remaining > backoff:
                        time.sleep(backoff)
                        backoff = min(backoff * 2, 2.0)
                        continue
                    raise ServerUnavailable(f"{self.target} is not reachable ({unavailable})") from None
                if code == "DEADLINE_EXCEEDED" and unavailable:
                    raise ServerUnavailable(f"{self.target} is not reachable ({unavailable})") from None
                if code == "DEADLINE_EXCEEDED":
                    raise ServerUnavailable(f"{self.target} did not answer {method} within {timeout or self.timeout:g}s") from None
                raise RpcError(code, details, method=method) from None

    @staticmethod
    def model_spec(spec, model: str, version: int | None = None, label: str | None = None, signature: str | None = None) -> None:
        spec.name = model
        if version is not None and label:
            raise UsageError("give a version or a label, not both")
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label
        if signature:
            spec.signature_name = signature

    def predict(self, inputs: Mapping[str, Any], model: str, *, version: int | None = None, label: str | None = None,
                signature: str = "serving_default", output_filter: list[str] | tuple[str, ...] = (),
                timeout: float | None = None) -> dict[str, np.ndarray]:
        request = protos.PredictRequest()
        self.model_spec(request.model_spec, model, version, label, signature)
        for name, value in inputs.items():
            to_tensor_proto(value, request.inputs[name])
        request.output_filter.extend(output_filter)
        response = self._call(self._predict, request, "Predict", timeout)
        return {name: to_ndarray(tensor) for name, tensor in response.outputs.items()}

    def predict_with_version(self, inputs, model, **kwargs) -> tuple[dict[str, np.ndarray], int]:
        """Like predict, and which version answered (from the response's model_spec)."""
        request = protos.PredictRequest()
        self.model_spec(request.model_spec, model, kwargs.get("version"), kwargs.get("label"), kwargs.get("signature", "serving_default"))
        for name, value in inputs.items():
            to_tensor_proto(value, request.inputs[name])
        response = self._call(self._predict, request, "Predict", kwargs.get("timeout"))
        return {n: to_ndarray(t) for n, t in response.outputs.items()}, int(response.model_spec.version.value)

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> dict[str, Signature]:
        request = protos.GetModelMetadataRequest()
        self.model_spec(request.model_spec, model, version, label)
        request.metadata_field.append("signature_def")
        response = self._call(self._metadata, request, "GetModelMetadata", timeout)
        if "signature_def" not in response.metadata:
            return {}
        signature_map = protos.SignatureDefMap.FromString(response.metadata["signature_def"].value)
        return {key: _signature_from_proto(key, sig) for key, sig in signature_map.signature_def.items()}

    def status(self, model: str, *, version: int | None = None, label: str | None = None,
               timeout: float | None = None) -> list[VersionStatus]:
        request = protos.GetModelStatusRequest()
        self.model_spec(request.model_spec, model, version, label)
        response = self._call(self._status, request, "GetModelStatus", timeout)
        return [
            VersionStatus(version=int(s.version), state=protos.STATE_NAMES.get(s.state, str(s.state)),
                          error_code=protos.ERROR_CODE_NAMES.get(s.status.error_code, str(s.status.error_code)),
                          error_message=s.status.error_message)
            for s in response.model_version_status
        ]

    def wait_until_available(self, model: str, *, timeout: float = 60.0, version: int | None = None,
                             poll: float = 0.25) -> list[VersionStatus]:
        """Block until every reported version of ``model`` is AVAILABLE; ServerUnavailable on timeout."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerUnavailable(f"{model} at {self.target} is not available after {timeout:g}s: {last}")
            try:
                states = self.status(model, version=version, timeout=min(5.0, max(remaining, 0.1)))
                ended = [s for s in states if s.state == "END" and s.error_code != "OK"]
                if ended and not any(s.state == "AVAILABLE" for s in states):
                    raise ServerUnavailable(f"{model} version {ended[0].version} failed to load: {ended[0].error_message}")
                if states and all(s.state in ("AVAILABLE", "END") for s in states) and any(s.state == "AVAILABLE" for s in states):
                    return states
                last = ", ".join(f"version {s.version} {s.state}" for s in states) or "no versions"
            except ServerUnavailable as exc:
                if "failed to load" in str(exc):
                    raise
                last = str(exc)
            except RpcError as exc:
                last = exc.message
            time.sleep(min(poll, max(deadline - time.monotonic(), 0)))


def _signature_from_proto(key: str, sig) -> Signature:
    def spec(name: str, info) -> TensorSpec:
        dims = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
        return TensorSpec(name=name, dtype=dtype_name(info.dtype), shape=dims)

    return Signature(
        key=key,
        inputs=tuple(spec(n, sig.inputs[n]) for n in sorted(sig.inputs)),
        outputs=tuple(spec(n, sig.outputs[n]) for n in sorted(sig.outputs)),
        method_name=sig.method_name,
    )
