"""``ServingClient``: a TensorFlow Serving gRPC client with the defaults production needs.

A deadline on every call; TLS and mTLS; keepalive; a receive limit far above gRPC's 4 MiB default
(a batch of images overflows it); errors that keep the gRPC status code.

Retries are gRPC's own, configured once on the channel, and all happen inside the call's one deadline:

- the service config's ``retryPolicy`` re-sends a call that ended in UNAVAILABLE (a server that is
  restarting, draining or overloaded, a connection that broke mid-call), up to ``retries`` more
  times with exponential backoff;
- ``wait_for_ready`` makes each attempt wait for a connection instead of failing at once while none
  can be made (nothing listening yet, a server restarting), with reconnect backoff capped at
  ``MAX_RECONNECT_BACKOFF_MS`` so that a server that comes back is found quickly.

``retries=0`` turns both off: exactly one attempt, failing at once when the server cannot be reached.
A deadline that passes while the channel never got a connection is reported as "not reachable".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
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
DEFAULT_RETRIES = 4
# gRPC caps a retryPolicy's maxAttempts at 5 (the first attempt and four retries): more is not possible.
MAX_RETRIES = 4
KEEPALIVE_MS = 30_000
INITIAL_RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 2_000


def _retry_service_config(retries: int) -> str:
    return json.dumps({
        "methodConfig": [{
            "name": [{"service": protos.PREDICTION_SERVICE}, {"service": protos.MODEL_SERVICE}],
            "retryPolicy": {
                "maxAttempts": retries + 1,
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


@dataclass(frozen=True, eq=False)
class Prediction(Mapping[str, np.ndarray]):
    """The outputs of one Predict call (read it like a dict of arrays) and the version that answered."""

    outputs: dict[str, np.ndarray]
    version: int  # from the response's model_spec; 0 when the server does not say

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)


class ServingClient:
    """Calls one TensorFlow Serving endpoint (``host:port``)."""

    def __init__(self, target: str, *, timeout: float = DEFAULT_TIMEOUT, root_certificates: bytes | None = None,
                 private_key: bytes | None = None, certificate_chain: bytes | None = None,
                 server_name: str | None = None, retries: int = DEFAULT_RETRIES) -> None:
        if not target or ":" not in target:
            raise UsageError(f"--target {target!r}: expected HOST:PORT")
        if not 0 <= retries <= MAX_RETRIES:
            raise UsageError(f"retries={retries}: expected 0 to {MAX_RETRIES} (gRPC makes at most 5 attempts per call)")
        if timeout <= 0:
            raise UsageError(f"--timeout {timeout:g}: expected a positive number of seconds")
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self._tls = (root_certificates, private_key, certificate_chain, server_name)
        self.uses_tls = bool(root_certificates or private_key or certificate_chain)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            ("grpc.enable_retries", 1 if retries else 0),
        ]
        if retries:
            options.append(("grpc.service_config", _retry_service_config(retries)))
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_certificates or private_key or certificate_chain:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                                       certificate_chain=certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        # The channel's connectivity tells "never connected" from "connected but slow" at a deadline.
        self._connectivity = grpc.ChannelConnectivity.IDLE
        self._connectivity_lock = threading.Lock()
        self._channel.subscribe(self._on_connectivity, try_to_connect=False)
        self._predict = self._unary(protos.PREDICTION_SERVICE, "Predict", protos.PredictRequest, protos.PredictResponse)
        self._metadata = self._unary(protos.PREDICTION_SERVICE, "GetModelMetadata", protos.GetModelMetadataRequest, protos.GetModelMetadataResponse)
        self._status = self._unary(protos.MODEL_SERVICE, "GetModelStatus", protos.GetModelStatusRequest, protos.GetModelStatusResponse)

    def _unary(self, service: str, method: str, request_cls: Any, response_cls: Any) -> grpc.UnaryUnaryMultiCallable:
        return self._channel.unary_unary(f"/{service}/{method}", request_serializer=request_cls.SerializeToString,
                                         response_deserializer=response_cls.FromString)

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        with self._connectivity_lock:
            self._connectivity = state

    @property
    def connectivity(self) -> grpc.ChannelConnectivity:
        """The channel's last reported state (IDLE, CONNECTING, READY, TRANSIENT_FAILURE, SHUTDOWN)."""
        with self._connectivity_lock:
            return self._connectivity

    def close(self) -> None:
        self._channel.unsubscribe(self._on_connectivity)
        self._channel.close()

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------------

    def _call(self, stub: grpc.UnaryUnaryMultiCallable, request: Any, method: str, timeout: float | None) -> Any:
        seconds = self.timeout if timeout is None else timeout
        try:
            return stub(request, timeout=seconds, wait_for_ready=self.retries > 0)
        except grpc.RpcError as exc:
            raise self._error(exc, method, seconds) from exc

    def tls_problem(self, timeout: float = 5.0) -> str | None:
        """With TLS: why a handshake with the server fails (certificates refused, expired...), in one line; else None."""
        if not self.uses_tls:
            return None
        from tfship.client.tls import tls_problem

        root, key, chain, name = self._tls
        return tls_problem(self.target, root_certificates=root, private_key=key, certificate_chain=chain,
                           server_name=name, timeout=min(timeout, self.timeout))

    def _error(self, exc: grpc.RpcError, method: str, seconds: float) -> ServerUnavailable | RpcError:
        code = exc.code().name if exc.code() is not None else "UNKNOWN"
        details = exc.details() or ""
        if self.uses_tls and (code == "UNAVAILABLE" or (code == "DEADLINE_EXCEEDED" and self.connectivity is not grpc.ChannelConnectivity.READY)):
            problem = self.tls_problem()
            if problem:
                return ServerUnavailable(problem, code=code)
        if code == "UNAVAILABLE":
            attempts = f" after {self.retries + 1} attempts" if self.retries else ""
            return ServerUnavailable(f"{self.target} is unavailable{attempts}: {details or 'no details'}", code=code)
        if code == "DEADLINE_EXCEEDED":
            if self.connectivity is not grpc.ChannelConnectivity.READY:
                return ServerUnavailable(f"{self.target} is not reachable: no connection within {seconds:g}s (is the server "
                                         f"running and listening there, with TLS exactly when TLS options are given?)", code=code)
            return ServerUnavailable(f"{self.target} did not answer {method} within {seconds:g}s", code=code)
        return RpcError(code, details, method=method)

    @staticmethod
    def _model_spec(spec: Any, model: str, version: int | None = None, label: str | None = None, signature: str | None = None) -> None:
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
                signature: str = "serving_default", output_filter: Sequence[str] = (),
                timeout: float | None = None) -> Prediction:
        """Predict on ``inputs``; the result reads like a dict of output arrays and says which version answered."""
        request = protos.PredictRequest()
        self._model_spec(request.model_spec, model, version, label, signature)
        for name, value in inputs.items():
            to_tensor_proto(value, request.inputs[name])
        request.output_filter.extend(output_filter)
        response = self._call(self._predict, request, "Predict", timeout)
        return Prediction({name: to_ndarray(tensor) for name, tensor in response.outputs.items()},
                          int(response.model_spec.version.value))

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None,
                 timeout: float | None = None) -> dict[str, Signature]:
        request = protos.GetModelMetadataRequest()
        self._model_spec(request.model_spec, model, version, label)
        request.metadata_field.append("signature_def")
        response = self._call(self._metadata, request, "GetModelMetadata", timeout)
        if "signature_def" not in response.metadata:
            return {}
        signature_map = protos.SignatureDefMap.FromString(response.metadata["signature_def"].value)
        return {key: _signature_from_proto(key, sig) for key, sig in signature_map.signature_def.items()}

    def status(self, model: str, *, version: int | None = None, label: str | None = None,
               timeout: float | None = None) -> list[VersionStatus]:
        request = protos.GetModelStatusRequest()
        self._model_spec(request.model_spec, model, version, label)
        response = self._call(self._status, request, "GetModelStatus", timeout)
        return [
            VersionStatus(version=int(s.version), state=protos.STATE_NAMES.get(s.state, str(s.state)),
                          error_code=protos.ERROR_CODE_NAMES.get(s.status.error_code, str(s.status.error_code)),
                          error_message=s.status.error_message)
            for s in response.model_version_status
        ]


def _signature_from_proto(key: str, sig: Any) -> Signature:
    def spec(name: str, info: Any) -> TensorSpec:
        dims = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
        return TensorSpec(name=name, dtype=dtype_name(info.dtype), shape=dims)

    return Signature(
        key=key,
        inputs=tuple(spec(n, sig.inputs[n]) for n in sorted(sig.inputs)),
        outputs=tuple(spec(n, sig.outputs[n]) for n in sorted(sig.outputs)),
        method_name=sig.method_name,
    )
