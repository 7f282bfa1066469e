"""The engine's fast paths give the answers of the plain ones: tensor_content read from the wire bytes
(no copy), request arrays fed to the model's Session as they are (no copy), the batcher's callbacks and its
run on the loop when the engine is idle."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfship.core.codec import MAX_SCANNED_FIELDS, CodecError, bfloat16, split_tensor_contents, to_ndarray, to_tensor_proto  # noqa: E402
from tfship.serving.config import BatchingOptions  # noqa: E402
from tfship.serving.local_engine import LocalEngine, ModelConfig  # noqa: E402
from tfship.serving.local_engine.grpc_service import ZERO_COPY_BYTES  # noqa: E402

DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
          np.uint64, np.bool_, np.complex64, np.complex128, bfloat16()]


def request_with(arrays: dict[str, np.ndarray]) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    for name, value in arrays.items():
        to_tensor_proto(value, request.inputs[name])
    request.output_filter.append("y")
    return request.SerializeToString()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_tensor_content_views_round_trip_every_dtype_without_a_copy(dtype):
    rng = np.random.default_rng(1)
    value = (rng.random((3, 5, 2)) * 100).astype(dtype)
    other = np.arange(7, dtype=np.int32)
    data = request_with({"a": value, "b": other})
    stripped, views = split_tensor_contents(data, 2)
    parsed = predict_pb2.PredictRequest.FromString(stripped)
    assert len(stripped) < len(data) - value.nbytes - other.nbytes  # the parsed message holds no tensor bytes
    decoded = to_ndarray(parsed.inputs["a"], views["a"])
    assert decoded.dtype == np.dtype(dtype) and decoded.shape == value.shape
    np.testing.assert_array_equal(decoded, value)
    np.testing.assert_array_equal(decoded, to_ndarray(predict_pb2.PredictRequest.FromString(data).inputs["a"]))  # as from the field
    np.testing.assert_array_equal(to_ndarray(parsed.inputs["b"], views["b"]), other)
    assert np.shares_memory(decoded, np.frombuffer(data, np.uint8))  # a view into the request's bytes


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    """A TF2 SavedModel with one identity signature per dtype, loaded as the engine loads it (in a Session)."""
    from tfship.serving.local_engine.session import load_session

    class Identities(tf.Module):
        pass

    signatures = {}
    for dtype in [*DTYPES, object]:
        tf_dtype = tf.string if dtype is object else tf.as_dtype(np.dtype(dtype))
        fn = tf.function(lambda x: {"y": tf.identity(x)}, input_signature=[tf.TensorSpec(None, tf_dtype, name="x")])
        signatures[f"id_{tf_dtype.name}"] = fn.get_concrete_function()
    path = tmp_path_factory.mktemp("identities") / "1"
    tf.saved_model.save(Identities(), str(path), signatures=signatures)
    model, entries = load_session(path, {"serve"})
    yield entries
    model.close()


def aligned(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An array at a 64-byte boundary: what TensorFlow takes as a tensor's memory without copying it."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(size + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + size].view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", [*DTYPES, object], ids=lambda d: np.dtype(d).name)
def test_request_tensors_reach_the_session_as_they_are_without_a_copy(identities, dtype):
    """Every dtype, contiguous or not, scalar or not, comes back from the model as sent; an aligned array is the
    fed tensor's own memory all the way (an identity answers with the very array it was given)."""
    rng = np.random.default_rng(2)
    if dtype is object:
        value = np.array([b"a", b"", "\u00e9".encode()] * 2, dtype=object).reshape(2, 3)
    else:
        value = (rng.random((2, 3)) * 100).astype(dtype)
    entry = identities["id_" + ("string" if dtype is object else tf.as_dtype(np.dtype(dtype)).name)]
    for array in (value, value[:, ::2], np.asfortranarray(value), value[0, 0]):
        out = entry.fn(x=array)["y"]
        assert isinstance(out, np.ndarray) and (out.dtype, out.shape) == (np.dtype(dtype), np.shape(array))
        np.testing.assert_array_equal(out, array)
    if dtype is not object:
        large = aligned((256, 1024), dtype)  # 0.25-2 MB
        assert np.shares_memory(entry.fn(x=large)["y"], large)


def without_contents(data: bytes) -> predict_pb2.PredictRequest:
    """What protobuf itself parses from ``data``, tensor_content cleared."""
    parsed = predict_pb2.PredictRequest.FromString(data)
    for tensor in parsed.inputs.values():
        tensor.ClearField("tensor_content")
    return parsed


def test_tensor_contents_follow_protobufs_merge_rules():
    first = request_with({"x": np.array([1.0, 2.0], np.float32)})
    second = request_with({"x": np.array([5.0, 6.0], np.float32)})
    # Concatenated messages merge: a map key given twice keeps its last entry, as the parser does.
    data = first + second
    parsed = predict_pb2.PredictRequest.FromString(data)
    stripped, views = split_tensor_contents(data, 2)
    np.testing.assert_array_equal(to_ndarray(parsed.inputs["x"], views["x"]), to_ndarray(parsed.inputs["x"]))
    np.testing.assert_array_equal(to_ndarray(parsed.inputs["x"], views["x"]), [5.0, 6.0])
    assert predict_pb2.PredictRequest.FromString(stripped) == without_contents(data)
    # Values in float_val (no tensor_content) are not in the views; the parsed message decodes them.
    request = predict_pb2.PredictRequest()
    request.inputs["v"].dtype = tf.float32.as_datatype_enum
    request.inputs["v"].float_val.extend([1.5, 2.5])
    stripped, views = split_tensor_contents(request.SerializeToString(), 2)
    assert views == {} and predict_pb2.PredictRequest.FromString(stripped) == request
    # Bytes that do not parse: None (the caller falls back to the parsed message, which refuses them).
    assert split_tensor_contents(first[:-5], 2) is None  # cut inside the tensor
    assert split_tensor_contents(b"\x12\xff\xff\xff\xff\x0f", 2) is None
    # A message of many small fields is left to protobuf's parser (read at C speed, not field by field here).
    request = predict_pb2.PredictRequest.FromString(first)
    request.output_filter.extend(f"o{i}" for i in range(MAX_SCANNED_FIELDS))
    assert split_tensor_contents(request.SerializeToString(), 2) is None


def test_the_message_without_its_tensor_bytes_parses_as_the_whole_one_does():
    """Every other field is kept as sent, whatever the order of fields and pieces on the wire."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.model_spec.version.value = 7
    request.model_spec.signature_name = "serving_default"
    request.output_filter.extend(["y", "z"])
    to_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3), request.inputs["a"])
    to_tensor_proto(np.array([b"s", b"t"], object), request.inputs["s"])  # string_val, no tensor_content
    request.inputs["e"].dtype = tf.float32.as_datatype_enum  # an empty tensor_content
    request.inputs["e"].tensor_shape.dim.add(size=0)
    data = request.SerializeToString()
    # A later entry of a key replaces the earlier one; a TensorProto given in two pieces within one entry
    # (dtype and shape, then the content) merges; fields before and after the map and an unknown field.
    late = predict_pb2.PredictRequest()
    to_tensor_proto(np.arange(6, 12, dtype=np.float32), late.inputs["a"])
    late.output_filter.append("w")
    head = to_tensor_proto(np.zeros((2, 2), np.float32))
    head.ClearField("tensor_content")
    pieces = [head.SerializeToString(), type(head)(tensor_content=np.arange(4, dtype=np.float32).tobytes()).SerializeToString()]
    entry = b"\x0a\x01p" + b"".join(b"\x12" + bytes([len(piece)]) + piece for piece in pieces)  # key "p", the value twice
    in_pieces = b"\x12" + bytes([len(entry)]) + entry
    unknown = b"\xa8\x1f\x05"  # field 501, varint 5
    for wire in (data, data + late.SerializeToString() + unknown, unknown + in_pieces + late.SerializeToString() + data,
                 data + in_pieces):
        stripped, views = split_tensor_contents(wire, 2)
        whole = predict_pb2.PredictRequest.FromString(wire)
        assert predict_pb2.PredictRequest.FromString(stripped) == without_contents(wire)
        assert sorted(views) == sorted(k for k, t in whole.inputs.items() if t.tensor_content)
        for name, view in views.items():
            np.testing.assert_array_equal(to_ndarray(whole.inputs[name], view), to_ndarray(whole.inputs[name]))


def test_a_view_of_the_wrong_length_is_refused_like_the_field():
    tensor = to_tensor_proto(np.zeros((2, 3), np.float32))
    with pytest.raises(CodecError, match="tensor_content holds 20 bytes"):
        to_ndarray(tensor, memoryview(bytes(20)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    import keras

    root = tmp_path_factory.mktemp("perf") / "m"
    x = keras.Input(shape=(4,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, kernel_initializer="ones", bias_initializer="zeros")(x))
    model.export(str(root / "1"), format="tf_saved_model", verbose=False)
    return root


def expected(x: np.ndarray) -> np.ndarray:
    return np.repeat(x.sum(axis=1, keepdims=True), 3, axis=1)


def predict_call(stub, x: np.ndarray, name: str = "m"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    to_tensor_proto(x, request.inputs["x"])
    return stub.Predict(request, timeout=30)


@pytest.mark.parametrize("timeout_micros", [0, 2000])
def test_batched_answers_are_each_callers_own_rows(model_dir, timeout_micros):
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=timeout_micros, num_batch_threads=1)
    with LocalEngine([ModelConfig("m", model_dir)], grpc_port=0, rest_port=None, batching=options) as engine:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{engine.grpc_port}"))
        # One at a time (the idle engine may run the batch on its loop), then many at once (batches of several).
        for i in range(5):
            x = np.full((1, 4), i, np.float32)
            answer = predict_call(stub, x)
            np.testing.assert_allclose(to_ndarray(answer.outputs["output_0"]), expected(x))
        failures: list[str] = []

        def caller(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for _ in range(15):
                x = rng.random((int(rng.integers(1, 4)), 4), dtype=np.float32)
                got = to_ndarray(predict_call(stub, x).outputs["output_0"])
                if got.shape != (len(x), 3) or not np.allclose(got, expected(x), atol=1e-5):
                    failures.append(f"caller {seed}: {x} -> {got}")

        threads = [threading.Thread(target=caller, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        # A failing batch still answers with TF Serving's error, on the loop or on the batch thread.
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as caught:
                predict_call(stub, np.zeros((1, 5), np.float32))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        text = engine.core.metrics.render()
        assert 'tfship_inflight_requests{model_name="m"} 0.0' in text
        assert 'tfship_batch_queue_depth{model_name="m"} 0.0' in text


def test_large_request_is_decoded_from_the_wire_and_answers_the_same(model_dir):
    rows = ZERO_COPY_BYTES // 16 + 100  # 4 float32 a row: the request is above the zero-copy size
    x = np.random.default_rng(3).random((rows, 4), dtype=np.float32)
    options = BatchingOptions(max_batch_size=1 << 16, batch_timeout_micros=0, num_batch_threads=1)
    for batching in (options, None):
        with LocalEngine([ModelConfig("m", model_dir)], grpc_port=0, rest_port=None, batching=batching) as engine:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{engine.grpc_port}"))
            answer = predict_call(stub, x)
            np.testing.assert_allclose(to_ndarray(answer.outputs["output_0"]), expected(x), rtol=1e-5)
            # A tensor_content that does not fit its shape gets the same refusal as a small request.
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "m"
            to_tensor_proto(x, request.inputs["x"])
            request.inputs["x"].tensor_shape.dim[0].size = rows + 1
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "input 'x': tensor_content holds" in caught.value.details()


def test_idle_engine_runs_short_batches_on_the_loop_and_long_or_larger_ones_on_a_batch_thread():
    import asyncio
    import time

    from tfship.serving.local_engine.batching import INLINE_SECONDS, Batcher

    threads: list[str] = []

    def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        threads.append(threading.current_thread().name)
        if arrays["x"][0, 0] < 0:  # a slow call
            time.sleep(INLINE_SECONDS * 3)
        return {"y": arrays["x"] * 2}

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1))
        try:
            answers = []
            for rows, sign in ((1, 1), (1, 1), (4, 1), (4, 1), (4, -1), (4, 1)):
                x = np.full((rows, 2), sign * (len(answers) + 1), np.float32)
                answers.append((await batcher.submit(("m", 1, "s", 0), "m", {"x": x}, rows, run))["y"] / x)
            return answers
        finally:
            batcher.stop()

    answers = asyncio.run(scenario())
    assert all(np.all(a == 2) for a in answers)
    on_loop = [name == threading.current_thread().name for name in threads]
    # First call unknown: a batch thread; then short: the loop; more rows than measured: a batch thread again;
    # the same rows: the loop; after a slow call: a batch thread.
    assert on_loop == [False, True, False, True, True, False]


def test_short_batches_run_on_the_loop_under_load_unless_a_batch_thread_is_busy():
    import asyncio
    import time

    from tfship.serving.local_engine.batching import INLINE_SECONDS, Batcher

    calls: list[tuple[str, bool, int]] = []
    loop_thread = threading.current_thread().name

    def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        slow = bool(arrays["x"][0, 0] < 0)
        calls.append(("slow" if slow else "short", threading.current_thread().name == loop_thread, len(arrays["x"])))
        if slow:
            time.sleep(INLINE_SECONDS * 60)
        return {"y": arrays["x"] * 2}

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(BatchingOptions(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=2))

        async def ask(key: tuple, value: float, shape: tuple = (1, 2)) -> np.ndarray:
            x = np.full(shape, value, np.float32)
            return (await batcher.submit(key, "m", {"x": x}, shape[0], run))["y"] / x

        short, slow = ("m", 1, "short", 0), ("m", 1, "slow", 0)
        try:
            answers = [await ask(short, 1), await ask(short, 2)]  # first measured on a thread, then known short
            busy = asyncio.ensure_future(ask(slow, -1, (1, 3)))  # other shapes: its own queue, a batch thread
            await asyncio.sleep(INLINE_SECONDS * 10)
            answers.append(await ask(short, 3))  # a batch thread is busy: this one takes the other thread
            answers.append(await busy)
            answers.append(await ask(short, 8, (4, 2)))  # more rows than measured: a batch thread, measured
            # Concurrent callers, no batch thread busy: their batch runs on the loop, the callers' rows each their own.
            answers += await asyncio.gather(*(ask(short, value) for value in (4, 5, 6, 7)))
            return answers
        finally:
            batcher.stop()

    answers = asyncio.run(scenario())
    assert all(np.all(a == 2) for a in answers)
    assert calls[:5] == [("short", False, 1), ("short", True, 1), ("slow", False, 1), ("short", False, 1), ("short", False, 4)]
    assert calls[5:] and all(kind == "short" and on_loop for kind, on_loop, _ in calls[5:])
    assert sum(rows for _, _, rows in calls[5:]) == 4


def test_signature_inputs_are_fed_by_their_tensor_names_whatever_their_order(tmp_path):
    """A TF2 signature's inputs reach their own placeholders, by the tensor names the SignatureDef lists, when their
    aliases sort otherwise than the function declares them."""
    from tfship.serving.local_engine import predict
    from tfship.serving.local_engine.session import load_session

    class TwoInputs(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="zeta"), tf.TensorSpec([None], tf.float32, name="alpha")])
        def serve(self, zeta, alpha):
            return {"out": zeta * 2.0 + alpha}

    module = TwoInputs()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.serve})
    model, entries = load_session(tmp_path / "1", {"serve"})
    try:
        arrays = {"zeta": np.array([1.0, 2.0], np.float32), "alpha": np.array([10.0, 20.0], np.float32)}
        np.testing.assert_array_equal(predict.run_signature(entries["serving_default"], arrays)["out"], [12.0, 24.0])
        # TensorFlow's own keyword binding of the same SavedModel agrees.
        keyword = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"](
            **{k: tf.constant(v) for k, v in arrays.items()})["out"].numpy()
        np.testing.assert_array_equal(predict.run_signature(entries["serving_default"], arrays)["out"], keyword)
    finally:
        model.close()


def test_signatures_answer_each_caller_from_many_threads_with_ops_on_the_calling_thread(tmp_path):
    """inter_op -1 (what the model server chooses on small machines): each caller's ops run on its own thread; calls
    from several threads at once, feeding different subsets of inputs, each get their own answer."""
    from concurrent.futures import ThreadPoolExecutor

    from tfship.serving.local_engine.session import load_session

    class Affine(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"), tf.TensorSpec([None], tf.float32, name="b")])
        def serve(self, x, b):
            return {"y": x * 3.0 + b}

    module = Affine()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"serving_default": module.serve})
    model, entries = load_session(tmp_path / "1", {"serve"}, intra_op_threads=1, inter_op_threads=-1)
    fn = entries["serving_default"].fn

    def call(i: int) -> tuple[int, np.ndarray]:
        x = np.arange(i, i + 5, dtype=np.float32)
        return i, fn(x=x, b=np.full(5, i, np.float32))["y"]

    try:
        with ThreadPoolExecutor(8) as pool:
            for i, y in pool.map(call, range(400)):
                np.testing.assert_array_equal(y, np.arange(i, i + 5, dtype=np.float32) * 3.0 + i)
        # A subset of the inputs is fed as given: the graph then asks for the missing one, in TensorFlow's words.
        with pytest.raises(tf.errors.InvalidArgumentError, match="serving_default_b"):
            fn(x=np.zeros(2, np.float32))
    finally:
        model.close()


def test_a_merged_and_padded_batch_reaches_tensorflow_as_the_tensors_own_memory(identities):
    """Several callers' rows, padded to an allowed batch size, are written once: the Session takes that array
    as its tensor (the identity answers with the batch's own memory) instead of copying it again."""
    import asyncio

    from tfship.serving.local_engine.batching import Batcher

    seen: list[tuple[np.ndarray, bool]] = []

    def run(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays["x"]
        seen.append((x.copy(), np.shares_memory(identities["id_float32"].fn(x=x)["y"], x)))
        return {"y": x * 2}

    async def scenario() -> list[np.ndarray]:
        options = BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000, num_batch_threads=1, allowed_batch_sizes=[2, 8])
        batcher = Batcher(options)
        answers = []
        try:
            # Rounds of three callers, each round one batch (of 64 KiB and more once padded): numpy's own arrays
            # are 64-byte aligned only now and then.
            for width in range(2048, 2056):
                values = [np.full((rows, width), value, np.float32) for rows, value in ((1, 1.0), (2, 2.0), (1, 3.0))]
                answers.append(await asyncio.gather(*(batcher.submit(("m", 1, "s", 0), "m", {"x": x}, len(x), run) for x in values)))
        finally:
            batcher.stop()
        return answers

    rounds = asyncio.run(scenario())
    for width, answers in enumerate(rounds, start=2048):
        assert [a["y"].tolist() for a in answers] == [[[2.0] * width], [[4.0] * width] * 2, [[6.0] * width]]
    assert len(seen) == len(rounds)
    for batch, shared in seen:
        # One batch of 4 rows padded to 8 with copies of the last row, as TF Serving's batching session pads.
        assert batch[:, 0].tolist() == [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0]
        assert shared


def test_v2_raw_input_contents_are_read_from_the_request_bytes_and_the_rest_parses_as_sent():
    from tfship.core.codec import split_repeated_bytes
    from tfship.serving.local_engine.v2 import RAW_INPUT_CONTENTS_FIELD, grpc_inputs
    from tfship.serving.local_engine.v2_protos import MESSAGES

    infer = MESSAGES["ModelInferRequest"]
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(3, dtype=np.int64)
    request = infer(model_name="m", id="r")
    request.inputs.add(name="a", datatype="FP32", shape=[2, 3])
    request.inputs.add(name="b", datatype="INT64", shape=[3])
    request.raw_input_contents.extend([a.tobytes(), b.tobytes()])
    request.outputs.add(name="y")
    data = request.SerializeToString() + infer(id="later").SerializeToString()  # a field after the raw contents
    stripped, views = split_repeated_bytes(data, RAW_INPUT_CONTENTS_FIELD)
    whole = infer.FromString(data)
    expected = infer()
    expected.CopyFrom(whole)
    expected.ClearField("raw_input_contents")
    assert infer.FromString(stripped) == expected and len(stripped) < len(data) - a.nbytes - b.nbytes
    assert [bytes(view) for view in views] == list(whole.raw_input_contents)
    arrays = grpc_inputs(infer.FromString(stripped), views)
    np.testing.assert_array_equal(arrays["a"], a)
    np.testing.assert_array_equal(arrays["b"], b)
    assert np.shares_memory(arrays["a"], np.frombuffer(data, np.uint8))  # a view into the request's bytes
    assert split_repeated_bytes(data[:-3], RAW_INPUT_CONTENTS_FIELD) is None  # cut inside a field
