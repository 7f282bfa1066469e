"""TF Serving's REST API: status, metadata, :predict (row and columnar), metrics."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from tfship.serving.config import PROMETHEUS_PATH
from tfship.serving.local_engine.errors import EngineError, invalid

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?:/(?P<metadata>metadata)|:(?P<verb>predict|classify|regress))?$")
MAX_BODY = 1 << 30


def _decode_b64(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return {k: _decode_b64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _to_array(value: Any) -> np.ndarray:
    try:
        probe = np.array(value, dtype=object)
    except ValueError:
        raise invalid("JSON Value: ragged array (every row must have the same length)") from None
    flat = probe.reshape(-1)
    if any(isinstance(v, (bytes, str)) for v in flat):
        out = np.empty(flat.shape, dtype=object)
        out[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
        return out.reshape(probe.shape)
    try:
        return np.array(value)
    except ValueError:
        raise invalid("JSON Value: ragged array (every row must have the same length)") from None


def _json_value(name: str, array: np.ndarray) -> Any:
    if array.dtype == object:
        def convert(v):
            if isinstance(v, bytes):
                if name.endswith("_bytes"):
                    return {"b64": base64.b64encode(v).decode("ascii")}
                try:
                    return v.decode("utf-8")
                except UnicodeDecodeError:
                    return {"b64": base64.b64encode(v).decode("ascii")}
            return v
        return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def parse_predict_body(body: dict, input_names: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """Arrays from a :predict body, and whether it used the row ('instances') form."""
    if not isinstance(body, dict):
        raise invalid("JSON Value: request body must be an object")
    if ("instances" in body) == ("inputs" in body):
        raise invalid("Missing 'inputs' or 'instances' key" if "instances" not in body else "Only one of 'inputs' or 'instances' may be set")
    if "instances" in body:
        instances = _decode_b64(body["instances"])
        if not isinstance(instances, list) or not instances:
            raise invalid("'instances' must be a non-empty list")
        if all(isinstance(i, dict) for i in instances):
            names = set(instances[0])
            if any(set(i) != names for i in instances):
                raise invalid("Failed to process element: every instance must name the same inputs")
            return {n: _to_array([i[n] for i in instances]) for n in names}, True
        if len(input_names) != 1:
            raise invalid(f"instances must be objects naming the inputs {sorted(input_names)}")
        return {input_names[0]: _to_array(instances)}, True
    inputs = _decode_b64(body["inputs"])
    if isinstance(inputs, dict):
        return {n: _to_array(v) for n, v in inputs.items()}, False
    if len(input_names) != 1:
        raise invalid(f"'inputs' must be an object naming the inputs {sorted(input_names)}")
    return {input_names[0]: _to_array(inputs)}, False


def _feature(value: Any):
    from tensorflow.core.example import feature_pb2

    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    if all(isinstance(v, bool) or isinstance(v, int) for v in values):
        feature.int64_list.value.extend(int(v) for v in values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        feature.float_list.value.extend(float(v) for v in values)
    elif all(isinstance(v, (str, bytes)) for v in values):
        feature.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else v for v in values)
    else:
        raise invalid("example features must be numbers, strings or {\"b64\": ...} values, or lists of one kind")
    return feature


def examples_call(core, verb: str, name: str, version: int | None, label: str | None, body: Any) -> dict:
    """REST :classify / :regress: {"signature_name", "context", "examples": [{feature: value}]}."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    if not isinstance(body, dict) or not isinstance(body.get("examples"), list) or not body["examples"]:
        raise invalid("'examples' must be a non-empty list of objects")
    request = (classification_pb2.ClassificationRequest if verb == "classify" else regression_pb2.RegressionRequest)()
    request.model_spec.name = name
    request.model_spec.signature_name = body.get("signature_name", "")
    context = _decode_b64(body.get("context") or {})
    for raw in body["examples"]:
        if not isinstance(raw, dict):
            raise invalid("each example must be an object of feature: value")
        example = request.input.example_list.examples.add()
        for key, value in {**context, **_decode_b64(raw)}.items():
            example.features.feature[key].CopyFrom(_feature(value))
    if verb == "classify":
        response = core.classify(request, version, label)
        return {"results": [[[c.label, c.score] for c in r.classes] for r in response.result.classifications]}
    response = core.regress(request, version, label)
    return {"results": [r.value for r in response.result.regressions]}


def make_handler(core):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tfship-local-engine"

        def log_message(self, format: str, *args) -> None:
            log.debug("rest: " + format, *args)

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload.encode("utf-8") if isinstance(payload, str) else json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, exc: EngineError) -> None:
            self._send(exc.http_status, {"error": exc.message})

        def _route(self):
            match = _PATH.match(self.path.split("?")[0])
            if not match:
                raise EngineError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {self.command} {self.path}")
            version = int(match["version"]) if match["version"] else None
            return match, version, match["label"]

        def _answer(self, handle) -> None:
            try:
                handle()
            except Exception as exc:  # never drop the connection without an answer
                log.exception("REST %s %s failed", self.command, self.path)
                self._send(500, {"error": f"internal error: {type(exc).__name__}"})

        def do_GET(self) -> None:
            self._answer(self._get)

        def do_POST(self) -> None:
            self._answer(self._post)

        def _get(self) -> None:
            if self.path.split("?")[0] == PROMETHEUS_PATH:
                self._send(200, core.metrics.render(), "text/plain; version=0.0.4")
                return
            try:
                match, version, label = self._route()
                if match["verb"]:
                    raise invalid(f"{match['verb']} needs POST")
                if match["metadata"]:
                    servable = core.manager.resolve(match["name"], version, label)
                    signatures = {k: json_format.MessageToDict(e.proto) for k, e in servable.signatures.items()}
                    self._send(200, {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                                     "metadata": {"signature_def": {"signature_def": signatures}}})
                    return
                states = core.manager.status(match["name"], version, label)
                self._send(200, {"model_version_status": [
                    {"version": str(s.version), "state": s.state,
                     "status": {"error_code": s.error_code.name, "error_message": s.error_message}} for s in states]})
            except EngineError as exc:
                self._error(exc)

        def _post(self) -> None:
            started = time.perf_counter()
            name = "?"
            try:
                match, version, label = self._route()
                name = match["name"]
                if not match["verb"]:
                    raise invalid(f"POST {self.path}: expected :predict, :classify or :regress")
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    raise invalid("request body too large")
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except (ValueError, UnicodeDecodeError) as exc:
                    raise invalid(f"JSON Parse error: {exc}") from None
                if match["verb"] in ("classify", "regress"):
                    result = examples_call(core, match["verb"], name, version, label, body)
                    core.metrics.request(name, match["verb"], "REST", "OK", (time.perf_counter() - started) * 1e6)
                    self._send(200, result)
                    return
                servable = core.manager.resolve(name, version, label)
                from tfship.serving.local_engine.predict import signature_of

                entry = signature_of(servable, (body or {}).get("signature_name", "") if isinstance(body, dict) else "")
                arrays, row = parse_predict_body(body, entry.input_order)
                _, _, outputs = core.predict_arrays(name, entry.key, arrays, version=servable.version)
                if row:
                    if len(outputs) == 1:
                        (out_name, value), = outputs.items()
                        result = {"predictions": _json_value(out_name, value)}
                    else:
                        count = len(next(iter(outputs.values())))
                        columns = {k: _json_value(k, v) for k, v in outputs.items()}
                        result = {"predictions": [{k: columns[k][i] for k in columns} for i in range(count)]}
                else:
                    if len(outputs) == 1:
                        (out_name, value), = outputs.items()
                        result = {"outputs": _json_value(out_name, value)}
                    else:
                        result = {"outputs": {k: _json_value(k, v) for k, v in outputs.items()}}
                core.metrics.request(name, "predict", "REST", "OK", (time.perf_counter() - started) * 1e6)
                self._send(200, result)
            except EngineError as exc:
                core.metrics.request(name, "predict", "REST", exc.code.name, (time.perf_counter() - started) * 1e6)
                self._error(exc)

    return Handler


class RestServer:
    def __init__(self, core, host: str, port: int) -> None:
        self.httpd = ThreadingHTTPServer((host, port), make_handler(core))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="tfship-rest", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
