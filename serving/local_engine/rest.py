"""TF Serving's REST API on aiohttp: status, metadata, :predict (row and columnar), :classify, :regress, metrics.

The server runs on the engine's asyncio loop, beside the gRPC server. Everything a client controls is
bounded: the URL and the headers (414 and 431, answered in TF Serving's ``{"error": ...}`` form), the
body whatever its headers say (Content-Length or chunked, 413), the time to send the headers and to
send the body (408), the bytes of bodies held at once (503), the JSON's nesting and value count (400).
Parsing and encoding run on a small thread pool, so a large body never stalls the loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from google.protobuf import json_format

from tfship.serving.config import PROMETHEUS_PATH
from tfship.serving.local_engine import bounded_json
from tfship.serving.local_engine.errors import EngineError, clipped, invalid
from tfship.serving.local_engine.predict import check_arrays, signature_of
from tfship.serving.local_engine.repeated_errors import RepeatedErrors

READY_PATH, LIVE_PATH = "/v1/ready", "/v1/live"  # tfship's own probes (not in TF Serving)
_V2_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?:/(?P<action>infer|ready))?$")
log = logging.getLogger(__name__)
errors_log = RepeatedErrors(log)

# TF Serving's forms (tensorflow_serving/model_servers/http_rest_api_handler.cc), plus labels and /metadata.
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?:/(?P<metadata>metadata)|:(?P<verb>predict|classify|regress))?$")
_INT64_MAX = (1 << 63) - 1
_SERVER = {"Server": "tfship-local-engine"}  # not aiohttp's default, which names the Python and aiohttp versions
_HTTP_STATUS_NAMES = {408: "DEADLINE_EXCEEDED", 413: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}


@dataclass(frozen=True)
class RestLimits:
    max_body_bytes: int = 64 << 20
    max_inflight_body_bytes: int = 256 << 20  # bodies of all connections held at once
    max_url_bytes: int = 8192  # longer: 414
    max_header_bytes: int = 8190  # one header line, name and value; longer: 431
    max_headers: int = 100  # more: 431
    header_timeout: float = 30.0  # to send the headers, and how long an idle keep-alive connection stays open
    body_timeout: float = 60.0  # to send the whole body; slower: 408
    backlog: int = 1024
    parse_threads: int = 2
    # --rest_api_timeout_in_ms (TF Serving's default: 30 s): a :predict/:classify/:regress that takes longer
    # gets DEADLINE_EXCEEDED. None: no limit.
    request_timeout: float | None = 30.0
    # MonitoringConfig.prometheus_config.path (--monitoring_config_file); TF Serving's default path otherwise.
    metrics_path: str = PROMETHEUS_PATH
    json: bounded_json.JsonLimits = field(default_factory=bounded_json.JsonLimits)

    def __post_init__(self) -> None:
        if self.max_url_bytes == self.max_header_bytes:
            # The HTTP parser reports both overflows alike; only the limit tells a 414 from a 431.
            raise ValueError(f"max_url_bytes and max_header_bytes must differ (both {self.max_url_bytes})")


class HttpError(Exception):
    """An answer that is not an engine status: 408, 413, 414, 431, 503 at the HTTP layer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _shown(value: Any, limit: int = 80) -> str:
    """A client's value in a one-line message, cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")


# --- request bodies --------------------------------------------------------------------------------

def _decode_b64(value: Any) -> tuple[Any, bool]:
    """Replace {"b64": ...} objects by bytes (in place where possible); also whether any string was seen."""
    if isinstance(value, dict):
        if "b64" in value:
            if len(value) != 1 or not isinstance(value["b64"], str):
                # tensorflow_serving/util/json_tensor.cc, Base64FormatError
                raise invalid(f"JSON Value: {_shown(value)} not formatted correctly for base64 data")
            try:
                return base64.b64decode(value["b64"]), True
            except (binascii.Error, ValueError):
                raise invalid("Unable to base64 decode") from None
        strings = False
        for key, item in value.items():
            value[key], seen = _decode_b64(item)
            strings = strings or seen
        return value, strings
    if isinstance(value, list):
        strings = False
        for index, item in enumerate(value):
            if isinstance(item, (list, dict)):
                value[index], seen = _decode_b64(item)
                strings = strings or seen
            elif isinstance(item, str):
                strings = True
        return value, strings
    return value, isinstance(value, (str, bytes))


def _to_array(value: Any) -> np.ndarray:
    value, strings = _decode_b64(value)
    try:
        if not strings:
            array = np.array(value)
            if array.dtype != object:
                return array
        probe = np.array(value, dtype=object)
    except (ValueError, TypeError, OverflowError):
        raise invalid("JSON Value: ragged array (every row must have the same length)") from None
    flat = probe.reshape(-1)
    if any(isinstance(v, (bytes, str)) for v in flat):
        out = np.empty(flat.shape, dtype=object)
        out[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in flat]
        return out.reshape(probe.shape)
    return probe


def _json_value(name: str, array: np.ndarray) -> Any:
    if array.dtype == object:
        def convert(v: Any) -> Any:
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


def signature_name_of(body: Any) -> str:
    name = body.get("signature_name", "") if isinstance(body, dict) else ""
    if not isinstance(name, str):
        # tensorflow_serving/util/json_tensor.cc, FormatSignatureError
        raise invalid(f"JSON Value: {_shown(name)} not formatted correctly. 'signature_name' key must be a string value.")
    return name


def parse_predict_body(body: Any, input_names: list[str]) -> tuple[dict[str, np.ndarray], bool]:
    """Arrays from a :predict body, and whether it used the row ('instances') form."""
    if not isinstance(body, dict):
        raise invalid("JSON Value: request body must be an object")
    if ("instances" in body) == ("inputs" in body):
        raise invalid("Missing 'inputs' or 'instances' key" if "instances" not in body else "Only one of 'inputs' or 'instances' may be set")
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid("'instances' must be a non-empty list")
        if all(isinstance(i, dict) and not (len(i) == 1 and "b64" in i) for i in instances):
            names = set(instances[0])
            if any(set(i) != names for i in instances):
                raise invalid("Failed to process element: every instance must name the same inputs")
            return {n: _to_array([i[n] for i in instances]) for n in names}, True
        if len(input_names) != 1:
            raise invalid(f"instances must be objects naming the inputs {sorted(input_names)}")
        return {input_names[0]: _to_array(instances)}, True
    inputs = body["inputs"]
    if isinstance(inputs, dict) and not (len(inputs) == 1 and "b64" in inputs):
        return {n: _to_array(v) for n, v in inputs.items()}, False
    if len(input_names) != 1:
        raise invalid(f"'inputs' must be an object naming the inputs {sorted(input_names)}")
    return {input_names[0]: _to_array(inputs)}, False


def predict_result(outputs: dict[str, np.ndarray], row: bool) -> dict[str, Any]:
    if row:
        if len(outputs) == 1:
            (out_name, value), = outputs.items()
            return {"predictions": _json_value(out_name, value)}
        count = len(next(iter(outputs.values())))
        columns = {k: _json_value(k, v) for k, v in outputs.items()}
        return {"predictions": [{k: columns[k][i] for k in columns} for i in range(count)]}
    if len(outputs) == 1:
        (out_name, value), = outputs.items()
        return {"outputs": _json_value(out_name, value)}
    return {"outputs": {k: _json_value(k, v) for k, v in outputs.items()}}


def _feature(value: Any) -> Any:
    from tensorflow.core.example import feature_pb2

    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    try:
        if all(isinstance(v, (bool, int)) for v in values):
            feature.int64_list.value.extend(int(v) for v in values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            feature.float_list.value.extend(float(v) for v in values)
        elif all(isinstance(v, (str, bytes)) for v in values):
            feature.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else v for v in values)
        else:
            raise invalid("example features must be numbers, strings or {\"b64\": ...} values, or lists of one kind")
    except (ValueError, TypeError, OverflowError):
        raise invalid(f"JSON Value: {_shown(value)} does not fit a tf.train.Feature (integers must fit int64)") from None
    return feature


def examples_request(verb: str, name: str, body: Any) -> Any:
    """REST :classify / :regress body {"signature_name", "context", "examples": [{feature: value}]} as a request."""
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    if not isinstance(body, dict) or not isinstance(body.get("examples"), list) or not body["examples"]:
        raise invalid("'examples' must be a non-empty list of objects")
    request = (classification_pb2.ClassificationRequest if verb == "classify" else regression_pb2.RegressionRequest)()
    request.model_spec.name = name
    request.model_spec.signature_name = signature_name_of(body)
    context, _ = _decode_b64(body.get("context") or {})
    if not isinstance(context, dict):
        raise invalid("'context' must be an object of feature: value")
    for raw in body["examples"]:
        if not isinstance(raw, dict):
            raise invalid("each example must be an object of feature: value")
        example = request.input.example_list.examples.add()
        decoded, _ = _decode_b64(raw)
        for key, value in {**context, **decoded}.items():
            example.features.feature[key].CopyFrom(_feature(value))
    return request


def examples_result(verb: str, response: Any) -> dict[str, Any]:
    if verb == "classify":
        return {"results": [[[c.label, c.score] for c in r.classes] for r in response.result.classifications]}
    return {"results": [r.value for r in response.result.regressions]}


# --- the server ------------------------------------------------------------------------------------

class _BodyBudget:
    """Bytes of request bodies held at once, over all connections (used on the loop only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


def _parse_error_response(exc: BaseException | None, limits: RestLimits) -> tuple[int, str]:
    """What a request the HTTP parser refused gets: TF Serving's JSON error, with the fitting status."""
    if isinstance(exc, LineTooLong):
        # aiohttp raises LineTooLong(line, limit) for the request line and for a header line alike;
        # the limit tells which one it was.
        if str(exc.args[1]) == str(limits.max_url_bytes):
            return 414, f"Request-URI too long: the URL has more than {limits.max_url_bytes} bytes"
        return 431, f"Request header fields too large: a header line has more than {limits.max_header_bytes} bytes"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return 431, f"Request header fields too large: more than {limits.max_headers} headers"
    detail = exc.message if isinstance(exc, BadHttpMessage) else type(exc).__name__ if exc else "unknown"
    detail = " ".join(detail.replace("^", " ").split())  # aiohttp's messages point at the byte on a second line
    return 400, f"Malformed HTTP request: {detail[:200]}"


def _handler_class(limits: RestLimits) -> type[web.RequestHandler]:
    class Handler(web.RequestHandler):
        def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                         message: str | None = None) -> web.StreamResponse:
            if status == 500:
                errors_log.error(f"rest:{type(exc).__name__}", f"REST request failed: {type(exc).__name__}: {str(exc)[:200]}", exc)
                answer = (500, f"internal error: {type(exc).__name__}")
            else:
                answer = _parse_error_response(exc, limits)
                log.debug("REST request refused by the HTTP parser: %s", answer[1])
            response = web.Response(status=answer[0], body=_error_body(answer[1]), content_type="application/json", headers=_SERVER)
            response.force_close()  # the stream cannot be trusted past a message that did not parse
            return response

        def log_exception(self, *args: Any, **kwargs: Any) -> None:
            exc = kwargs.get("exc_info")
            kind = type(exc).__name__ if isinstance(exc, BaseException) else "error"
            errors_log.error(f"rest-protocol:{kind}", f"REST connection error: {kind}", exc if isinstance(exc, BaseException) else None)

    return Handler


class RestServer:
    """TF Serving's REST API on the engine's loop; start() and stop() are coroutines for that loop."""

    def __init__(self, core: Any, host: str, port: int, limits: RestLimits | None = None) -> None:
        self.core = core
        self.host = host
        self.requested_port = port
        self.limits = limits or RestLimits()
        self.port = 0
        self._pool = ThreadPoolExecutor(max_workers=self.limits.parse_threads, thread_name_prefix="tfship-rest")
        self._budget = _BodyBudget(self.limits.max_inflight_body_bytes)
        self._web: web.Server | None = None
        self._listener: asyncio.base_events.Server | None = None
        self._draining = False

    async def start(self) -> None:
        limits = self.limits
        self._web = web.Server(self._handle)
        handler_class = _handler_class(limits)
        loop = asyncio.get_running_loop()
        options = {"keepalive_timeout": limits.header_timeout, "max_line_size": limits.max_url_bytes,
                   "max_field_size": limits.max_header_bytes, "max_headers": limits.max_headers,
                   "lingering_time": 2.0, "access_log": None}
        manager = self._web
        try:
            self._listener = await loop.create_server(lambda: handler_class(manager, loop=loop, **options),  # type: ignore[arg-type]
                                                      self.host, self.requested_port, backlog=limits.backlog)
        except OSError:
            self._pool.shutdown(wait=False)
            raise
        self.port = self._listener.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 1.0) -> None:
        self._draining = True
        if self._listener is not None:
            self._listener.close()
        if self._web is not None:
            self._web.pre_shutdown()
            await self._web.shutdown(grace)
        if self._listener is not None:
            await self._listener.wait_closed()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- plumbing ---------------------------------------------------------------------------------

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _read_body(self, request: web.BaseRequest, held: list[int]) -> bytearray:
        """The body, within the size limit whatever the headers say; ``held[0]`` counts what the budget lent."""
        limit = self.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise HttpError(413, f"request body of {request.content_length} bytes is larger than the limit of {limit} bytes "
                                 f"(the server's --tfship_rest_max_body_bytes)")
        if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
            # curl asks before sending a body over 1 KiB and waits a second for this answer.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's own expect handler: the response proper has not started
        body = bytearray()

        async def receive() -> None:
            async for chunk in request.content.iter_any():
                if len(body) + len(chunk) > limit:
                    raise HttpError(413, f"request body is larger than the limit of {limit} bytes (the server's --tfship_rest_max_body_bytes)")
                if not self._budget.take(len(chunk)):
                    raise HttpError(503, "the server holds too many request bodies at once; retry shortly")
                held[0] += len(chunk)
                body.extend(chunk)

        try:
            await asyncio.wait_for(receive(), self.limits.body_timeout)
        except asyncio.TimeoutError:
            raise HttpError(408, f"the request body did not arrive within {self.limits.body_timeout:g} s") from None
        return body

    @staticmethod
    def _json_response(status: int, payload: bytes, *, close: bool = False) -> web.Response:
        response = web.Response(status=status, body=payload, content_type="application/json", headers=_SERVER)
        if close:
            response.force_close()
        return response

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        try:
            if request.method in ("GET", "HEAD") and path == self.limits.metrics_path:
                return web.Response(body=self.core.metrics.render().encode("utf-8"),
                                    headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8", **_SERVER})
            if request.method in ("GET", "HEAD") and path in (READY_PATH, LIVE_PATH):
                return self._probe(path)
            if path == "/v2" or path.startswith("/v2/"):
                return await self._v2(request, path)
            return await self._route(request, path)
        except HttpError as exc:
            # The body may be partly unread: close rather than read what follows as a new request.
            return self._json_response(exc.status, _error_body(exc.message), close=True)
        except EngineError as exc:
            return self._json_response(exc.http_status, _error_body(clipped(exc.message)))
        except Exception as exc:  # never a traceback to the client, and one log line per kind and interval
            errors_log.error(f"rest:{request.method}:{type(exc).__name__}",
                             f"REST {request.method} {path[:200]} failed: {type(exc).__name__}: {str(exc)[:200]}", exc)
            return self._json_response(500, _error_body(f"internal error: {type(exc).__name__}"), close=True)

    async def _route(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        match = _PATH.match(path)
        if not match:
            if path.lower().startswith("/v1/"):
                # TF Serving: InvalidArgument("Malformed request: ", http_method, " ", request_path)
                raise invalid(f"Malformed request: {request.method} {path[:200]}")
            raise EngineError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {request.method} {path[:200]}")
        version = None
        if match["version"]:
            text = match["version"]
            if len(text) > 19 or int(text) > _INT64_MAX:
                # tensorflow_serving/model_servers/http_rest_api_handler.cc
                raise invalid(f"Failed to convert version: {text[:40]}{'...' if len(text) > 40 else ''} to numeric.")
            version = int(text)
        if request.method == "POST" and match["verb"]:
            return await self._post(request, match["name"], match["verb"], version, match["label"])
        if request.method in ("GET", "HEAD") and not match["verb"]:
            return self._get(match["name"], version, match["label"], bool(match["metadata"]))
        raise invalid(f"Malformed request: {request.method} {path[:200]}")

    def _probe(self, path: str) -> web.Response:
        """Beyond TF Serving (tensorflow/serving#1754): readiness without a model name, and liveness.

        /v1/ready: 200 when every configured model has an AVAILABLE version, else 503 with each model's
        reason; 503 while the server drains. /v1/live: 200 while the process serves HTTP at all.
        """
        from tfship.serving.local_engine.health import readiness_report

        if path == LIVE_PATH:
            return self._json_response(200, b'{"live": true}')
        ready, models = readiness_report(self.core.manager)
        if self._draining:
            ready = False
        payload = {"ready": ready, "draining": self._draining,
                   "models": {name: {"ready": reason is None, **({"reason": reason} if reason else {})}
                              for name, reason in models.items()}}
        return self._json_response(200 if ready else 503, json.dumps(payload).encode("utf-8"))

    async def _v2(self, request: web.BaseRequest, path: str) -> web.Response:
        """The Open Inference Protocol's REST API (KServe v2): health, server and model metadata, readiness, infer."""
        from tfship.serving.local_engine import v2

        match = _V2_PATH.match(path)
        if path == "/v2" and request.method in ("GET", "HEAD"):
            from importlib.metadata import version

            return self._json_response(200, json.dumps({"name": "tfship", "version": version("tfship"), "extensions": []}).encode())
        if path in ("/v2/health/live", "/v2/health/ready") and request.method in ("GET", "HEAD"):
            ok = path.endswith("live") or (v2.server_ready(self.core) and not self._draining)
            key = "live" if path.endswith("live") else "ready"
            return self._json_response(200 if ok else 400, json.dumps({key: ok}).encode())
        if not match:
            raise EngineError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {request.method} {path[:200]}")
        name, version_text, action = match["name"], match["version"] or "", match["action"]
        if action == "ready" and request.method in ("GET", "HEAD"):
            ready = v2.model_ready(self.core, name, version_text)
            return self._json_response(200 if ready else 400, json.dumps({"name": name, "ready": ready}).encode())
        if action is None and request.method in ("GET", "HEAD"):
            meta = v2.model_metadata(self.core, name, version_text)
            meta["inputs"] = [t.__dict__ for t in meta["inputs"]]
            meta["outputs"] = [t.__dict__ for t in meta["outputs"]]
            return self._json_response(200, json.dumps(meta).encode())
        if action == "infer" and request.method == "POST":
            held = [0]
            try:
                raw = await self._read_body(request, held)
                arrays, wanted, request_id = await self._in_pool(lambda: v2.rest_inputs(bounded_json.loads(raw, self.limits.json)))
                servable, outputs = await asyncio.wait_for(v2.infer(self.core, name, version_text, arrays, wanted),
                                                           self.limits.request_timeout)
            except asyncio.TimeoutError:
                raise EngineError(grpc.StatusCode.DEADLINE_EXCEEDED, "the request did not finish within --rest_api_timeout_in_ms") from None
            finally:
                self._budget.give(held[0])
            payload = await self._in_pool(lambda: json.dumps(v2.rest_outputs(servable, outputs, request_id)).encode("utf-8"))
            return self._json_response(200, payload)
        raise invalid(f"Malformed request: {request.method} {path[:200]}")

    def _get(self, name: str, version: int | None, label: str | None, metadata: bool) -> web.Response:
        if metadata:
            servable = self.core.manager.resolve(name, version, label)
            signatures = {k: json_format.MessageToDict(e.proto) for k, e in servable.signatures.items()}
            payload: dict[str, Any] = {"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
                                       "metadata": {"signature_def": {"signature_def": signatures}}}
        else:
            states = self.core.manager.status(name, version, label)
            payload = {"model_version_status": [
                {"version": str(s.version), "state": s.state,
                 "status": {"error_code": s.error_code.name, "error_message": s.error_message}} for s in states]}
        return self._json_response(200, json.dumps(payload).encode("utf-8"))

    async def _post(self, request: web.BaseRequest, name: str, verb: str, version: int | None, label: str | None) -> web.Response:
        started = time.perf_counter()
        status = "OK"
        held = [0]
        try:
            raw = await self._read_body(request, held)
            work = self._predict(name, version, label, raw) if verb == "predict" else self._examples(name, verb, version, label, raw)
            try:
                with self.core.metrics.inflight(name):
                    payload = await asyncio.wait_for(work, self.limits.request_timeout)
            except asyncio.TimeoutError:
                # --rest_api_timeout_in_ms: TF Serving runs the model with this deadline (RunOptions.timeout_in_ms).
                raise EngineError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"the request did not finish within --rest_api_timeout_in_ms "
                                  f"({(self.limits.request_timeout or 0) * 1000:g} ms)") from None
            return self._json_response(200, payload)
        except EngineError as exc:
            status = exc.code.name
            raise
        except HttpError as exc:
            status = _HTTP_STATUS_NAMES.get(exc.status, "INVALID_ARGUMENT")
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            self._budget.give(held[0])
            self.core.metrics.request(name, verb, "REST", status, (time.perf_counter() - started) * 1e6)

    async def _predict(self, name: str, version: int | None, label: str | None, raw: bytearray) -> bytes:
        def prepare() -> tuple[Any, Any, dict[str, np.ndarray], bool]:
            # The parsed JSON lives only in here: it costs several times the body, the arrays far less.
            body = bounded_json.loads(raw, self.limits.json)
            raw.clear()
            servable = self.core.manager.resolve(name, version, label)
            entry = signature_of(servable, signature_name_of(body))
            arrays, row = parse_predict_body(body, entry.input_order)
            return servable, entry, check_arrays(entry, arrays), row

        servable, entry, arrays, row = await self._in_pool(prepare)
        outputs = await self.core.run_async(servable, entry, arrays)
        del arrays
        return await self._in_pool(lambda: json.dumps(predict_result(outputs, row)).encode("utf-8"))

    async def _examples(self, name: str, verb: str, version: int | None, label: str | None, raw: bytearray) -> bytes:
        request = await self._in_pool(lambda: examples_request(verb, name, bounded_json.loads(raw, self.limits.json)))
        run = self.core.classify if verb == "classify" else self.core.regress
        response = await asyncio.get_running_loop().run_in_executor(self.core.model_pool, run, request, version, label)
        return json.dumps(examples_result(verb, response)).encode("utf-8")
