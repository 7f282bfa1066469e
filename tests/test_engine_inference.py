"""Classify / Regress / MultiInference with TF Serving's rules, on a TF1 model in a Session and a TF2 model.

The TF1 model is built as TF Serving's test model is (tensorflow_serving/servables/tensorflow/testdata/
saved_model_half_plus_two.py): a [None] string placeholder parsed with ParseExample, y = 0.5x + 2,
y2 = 0.5x + 3, y3 = 0.5x2 + 3, an asset file and a main_op. Expected numbers and messages come from
TF Serving's sources and tests, named next to each assertion.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2  # noqa: E402

from tfship.serving.local_engine import predict  # noqa: E402
from tfship.serving.local_engine.errors import EngineError  # noqa: E402
from tfship.serving.local_engine.inference import classify, multi_inference, multi_inference_model_spec, regress  # noqa: E402
from tfship.serving.local_engine.models import Servable  # noqa: E402
from tfship.serving.local_engine.session import is_tf1_saved_model, load_session  # noqa: E402

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"


def simple_runner(entry, arrays):
    return entry.fn(**arrays)


# -- models -----------------------------------------------------------------------------------------

def build_half_plus_two(export_dir: Path, original_assets: Path) -> None:
    """saved_model_half_plus_two.py (use_main_op=True), plus one classify signature whose classes come
    from a vocabulary asset through a lookup table, so assets and table initializers are exercised."""
    v1 = tf.compat.v1
    original_assets.mkdir(parents=True)
    (original_assets / "foo.txt").write_text("asset-file-contents")
    (original_assets / "labels.txt").write_text("small\nlarge\n")
    builder = v1.saved_model.Builder(str(export_dir))
    with tf.Graph().as_default(), v1.Session() as sess:
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(2.0, name="b")
        c = v1.Variable(3.0, name="c")
        serialized_tf_example = v1.placeholder(tf.string, name="tf_example", shape=[None])
        feature_configs = {
            "x": v1.FixedLenFeature([1], dtype=tf.float32),
            "x2": v1.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
        }
        tf_example = v1.parse_example(serialized_tf_example, feature_configs)
        x = tf.identity(tf_example["x"], name="x")
        y = tf.identity(tf.add(tf.multiply(a, x), b), name="y")
        y2 = tf.identity(tf.add(tf.multiply(a, x), c), name="y2")
        x2 = tf.identity(tf_example["x2"], name="x2")
        a2 = v1.Variable(0.5, name="a2")
        c2 = v1.Variable(3.0, name="c2")
        y3 = tf.identity(tf.add(tf.multiply(a2, x2), c2), name="y3")

        assets_filepath = tf.constant(str(original_assets / "foo.txt"))
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, assets_filepath)
        filename_tensor = v1.Variable("foo.txt", name="filename_tensor", trainable=False, collections=[])
        assign_filename_op = filename_tensor.assign("foo.txt")

        labels = v1.lookup.StaticHashTable(
            v1.lookup.TextFileInitializer(str(original_assets / "labels.txt"), tf.int64, v1.lookup.TextFileIndex.LINE_NUMBER,
                                          tf.string, v1.lookup.TextFileIndex.WHOLE_LINE), default_value="?")
        label = tf.identity(labels.lookup(tf.cast(x > 3.0, tf.int64)), name="label")

        info = v1.saved_model.utils.build_tensor_info

        def regression(inp, out):
            return v1.saved_model.signature_def_utils.build_signature_def({"inputs": info(inp)}, {"outputs": info(out)}, REGRESS)

        def classification(inp, outputs):
            return v1.saved_model.signature_def_utils.build_signature_def(
                {"inputs": info(inp)}, {k: info(v) for k, v in outputs.items()}, CLASSIFY)

        signature_def_map = {
            "regress_x_to_y": regression(serialized_tf_example, y),
            "regress_x_to_y2": regression(serialized_tf_example, y2),
            "regress_x2_to_y3": regression(x2, y3),
            "classify_x_to_y": classification(serialized_tf_example, {"scores": y}),
            "classify_x_to_label": classification(serialized_tf_example, {"classes": label, "scores": y}),
            "serving_default": v1.saved_model.signature_def_utils.build_signature_def({"x": info(x)}, {"y": info(y)}, PREDICT),
        }
        sess.run(v1.global_variables_initializer())
        builder.add_meta_graph_and_variables(
            sess, [v1.saved_model.tag_constants.SERVING], signature_def_map=signature_def_map,
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            main_op=tf.group(v1.saved_model.main_op.main_op(), assign_filename_op))
    builder.save()


class HalfPlusTwoTF2(tf.Module):
    """A TF2 model over serialized tf.Examples: every signature's method is tensorflow/serving/predict."""

    def __init__(self) -> None:
        super().__init__()
        self.a = tf.Variable(0.5)
        self.b = tf.Variable(2.0)

    def _y(self, inputs):
        parsed = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        return self.a * parsed["x"] + self.b

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        y = self._y(inputs)
        n = tf.shape(inputs)[0]
        return {"classes": tf.tile(tf.constant([["neg", "pos"]]), [n, 1]), "scores": tf.concat([-y, y], axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self._y(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def other_alias(self, examples):
        return {"outputs": self._y(examples)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def int_outputs(self, inputs):
        return {"outputs": tf.cast(self._y(inputs), tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def first_only(self, inputs):
        return {"scores": self._y(inputs)[:1]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def float_classes(self, inputs):
        return {"classes": self._y(inputs), "scores": self._y(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def flat_scores(self, inputs):
        return {"scores": self._y(inputs)[:, 0]}


@pytest.fixture(scope="module")
def tf1_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tf1")
    export_dir = root / "half_plus_two" / "1"
    build_half_plus_two(export_dir, root / "original" / "export" / "assets")
    # The SavedModel must use its own copy of the assets, not the files it was built from.
    for leftover in (root / "original" / "export" / "assets").iterdir():
        leftover.unlink()
    model, signatures = load_session(export_dir, {"serve"})
    yield export_dir, model, Servable("half_plus_two", 1, export_dir, model, signatures)
    model.close()


@pytest.fixture(scope="module")
def tf2_model(tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("tf2") / "tf2_half_plus_two" / "7"
    module = HalfPlusTwoTF2()
    tf.saved_model.save(module, str(export_dir), signatures={
        "serving_default": module.regress, "classify": module.classify, "regress": module.regress,
        "other_alias": module.other_alias, "int_outputs": module.int_outputs, "first_only": module.first_only,
        "float_classes": module.float_classes, "flat_scores": module.flat_scores})
    model, signatures = load_session(export_dir, {"serve"})  # as the engine loads every SavedModel
    yield export_dir, Servable("tf2_half_plus_two", 7, export_dir, model, signatures)
    model.close()


def example(**features: float):
    from tensorflow.core.example import example_pb2

    result = example_pb2.Example()
    for key, value in features.items():
        result.features.feature[key].float_list.value.append(value)
    return result


def regression_request(signature: str, *xs: float, model: str = "half_plus_two"):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for x in xs:
        request.input.example_list.examples.add().CopyFrom(example(x=x))
    return request


def classification_request(signature: str, *xs: float, model: str = "half_plus_two"):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for x in xs:
        request.input.example_list.examples.add().CopyFrom(example(x=x))
    return request


def failure(call, *args, **kwargs) -> EngineError:
    with pytest.raises(EngineError) as caught:
        call(*args, **kwargs)
    return caught.value


# -- loading --------------------------------------------------------------------------------------

def test_a_tf1_saved_model_loads_into_a_session_with_its_assets_and_main_op(tf1_model, tf2_model):
    export_dir, model, servable = tf1_model
    assert is_tf1_saved_model(export_dir) is True
    assert is_tf1_saved_model(tf2_model[0]) is False
    # main_op ran: it assigned the filename variable and initialized the table from assets/labels.txt.
    assert model.session.run("filename_tensor/Read/ReadVariableOp:0") == b"foo.txt"
    assert (export_dir / "assets" / "labels.txt").exists()
    entries = servable.signatures
    assert sorted(entries) == ["classify_x_to_label", "classify_x_to_y", "regress_x2_to_y3", "regress_x_to_y",
                               "regress_x_to_y2", "serving_default"]
    assert entries["regress_x_to_y"].method_name == REGRESS
    assert entries["classify_x_to_y"].method_name == CLASSIFY
    assert entries["serving_default"].method_name == PREDICT
    tf_example = entries["regress_x_to_y"].inputs["inputs"]
    assert (tf_example.dtype, tf_example.shape) == (tf.string, (None,))
    x = entries["serving_default"].inputs["x"]
    assert (x.dtype, x.shape) == (tf.float32, (None, 1))
    assert entries["regress_x_to_y"].proto.inputs["inputs"].name == "tf_example:0"
    # Predict on the TF1 signature, fed by tensor name: numpy or tf.Tensor inputs.
    for value in (np.array([[2.0], [4.0]], np.float32), tf.constant([[2.0], [4.0]])):
        out = entries["serving_default"].fn(x=value)
        np.testing.assert_allclose(out["y"], [[3.0], [4.0]])


def build_tf1_era_regressor(export_dir: Path) -> None:
    """A regressor as TF1-era exporters wrote it: the v1 ParseExample op (keys as scalars, an empty
    default for a required feature) and signature TensorInfos without shapes."""
    from tensorflow.core.protobuf import saved_model_pb2

    v1 = tf.compat.v1
    builder = v1.saved_model.Builder(str(export_dir))
    with tf.Graph().as_default(), v1.Session() as sess:
        serialized = v1.placeholder(tf.string, name="tf_example")
        parsed = tf.raw_ops.ParseExample(serialized=serialized, names=tf.constant([], tf.string), sparse_keys=[],
                                         dense_keys=[tf.constant("x")], dense_defaults=[tf.constant([], tf.float32)],
                                         sparse_types=[], dense_shapes=[[1]])
        y = tf.identity(0.5 * parsed.dense_values[0] + 3.0, name="y")
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def({"inputs": info(serialized)}, {"outputs": info(y)}, REGRESS)
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"regress_x_to_y": signature})
    builder.save()
    saved_model = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    for signature in saved_model.meta_graphs[0].signature_def.values():
        for tensor_info in [*signature.inputs.values(), *signature.outputs.values()]:
            tensor_info.ClearField("tensor_shape")
    (export_dir / "saved_model.pb").write_bytes(saved_model.SerializeToString())


def test_a_tf1_era_saved_model_that_tf_saved_model_load_rejects_runs_in_a_session(tmp_path):
    export_dir = tmp_path / "half_plus_three" / "1"
    build_tf1_era_regressor(export_dir)
    # load_v1_in_v2 reads an absent TensorInfo shape as a scalar and sets it on the [None, 1] output.
    with pytest.raises(ValueError, match="Shapes must be equal rank, but are 2 and 0"):
        tf.saved_model.load(str(export_dir))
    assert is_tf1_saved_model(export_dir) is True
    model, signatures = load_session(export_dir, {"serve"})
    try:
        assert signatures["regress_x_to_y"].inputs["inputs"].shape is None  # not recorded: unknown, not a scalar
        servable = Servable("half_plus_three", 1, export_dir, model, signatures)
        response = regress(servable, regression_request("regress_x_to_y", 2.0, 4.0, model="half_plus_three"), simple_runner,
                           method_check=True)
        assert [r.value for r in response.result.regressions] == [4.0, 5.0]  # y = 0.5x + 3
    finally:
        model.close()


def test_tags_that_match_no_meta_graph_are_refused_with_tensorflows_message(tf1_model):
    export_dir = tf1_model[0]
    # tensorflow/cc/saved_model/reader.cc FindMetaGraphDef: exact set equality, this message.
    with pytest.raises(ValueError) as caught:
        load_session(export_dir, {"serve", "gpu"})
    assert str(caught.value) == ("Could not find meta graph def matching supplied tags: { gpu serve }. To inspect available "
                                 "tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")


def test_model_errors_propagate_as_tensorflow_errors(tf1_model):
    servable = tf1_model[2]
    request = regression_request("regress_x_to_y")
    request.input.example_list.examples.add().CopyFrom(example(x2=1.0))  # "x" has no default: ParseExample fails
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        regress(servable, request, simple_runner, method_check=True)
    # The kernel's status text first, as TF Serving returns it (not Python's "Graph execution error:").
    assert caught.value.message.startswith("Name: <unknown>, Feature: x (data type: float) is required but could not be found.")


# -- Classify / Regress on the TF1 model -------------------------------------------------------------

def test_regress_and_classify_half_plus_two(tf1_model):
    servable = tf1_model[2]
    # regressor_test.cc / multi_inference_test.cc: regress_x_to_y is y = 0.5x + 2 (x=2 -> 3.0), y2 = 0.5x + 3.
    response = regress(servable, regression_request("regress_x_to_y", 2.0, 3.0), simple_runner, method_check=True)
    assert [r.value for r in response.result.regressions] == [3.0, 3.5]
    assert (response.model_spec.name, response.model_spec.signature_name, response.model_spec.version.value) == \
        ("half_plus_two", "regress_x_to_y", 1)
    response = regress(servable, regression_request("regress_x_to_y2", 2.0), simple_runner, method_check=True)
    assert [r.value for r in response.result.regressions] == [4.0]

    # classify_x_to_y has only "scores" (y): one class per example, with no label.
    response = classify(servable, classification_request("classify_x_to_y", 2.0, 3.0), simple_runner, method_check=True)
    assert [[(c.label, c.score) for c in r.classes] for r in response.result.classifications] == [[("", 3.0)], [("", 3.5)]]
    assert response.model_spec.signature_name == "classify_x_to_y"

    # classes from the vocabulary asset (table initialized by the main_op), scores from y.
    response = classify(servable, classification_request("classify_x_to_label", 2.0, 5.0), simple_runner, method_check=True)
    assert [[(c.label, c.score) for c in r.classes] for r in response.result.classifications] == \
        [[("small", 3.0)], [("large", 4.5)]]


def test_example_list_with_context_merges_the_context_into_every_example(tf1_model):
    servable = tf1_model[2]
    # util.cc InputToSerializedExampleTensor: context bytes then example bytes, so an example's own
    # feature replaces the context's (a map entry parsed later wins).
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    with_context = request.input.example_list_with_context
    with_context.context.CopyFrom(example(x=10.0))
    with_context.examples.add().CopyFrom(example(x2=1.0))
    with_context.examples.add().CopyFrom(example(x=4.0))
    response = regress(servable, request, simple_runner, method_check=True)
    assert [r.value for r in response.result.regressions] == [7.0, 4.0]


def test_empty_input_and_unknown_signatures_get_tf_servings_errors(tf1_model):
    servable = tf1_model[2]
    # util.cc: no examples (or no input at all) -> INVALID_ARGUMENT "Input is empty."
    for request in (regression_request("regress_x_to_y"), classification_request("classify_x_to_y")):
        call = regress if isinstance(request, regression_pb2.RegressionRequest) else classify
        error = failure(call, servable, request, simple_runner, method_check=False)
        assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    empty_context = regression_request("regress_x_to_y")
    empty_context.input.example_list_with_context.context.CopyFrom(example(x=1.0))
    assert failure(regress, servable, empty_context, simple_runner, method_check=False).message == "Input is empty."

    # classifier.cc / regressor.cc GetClassificationSignatureDef: INVALID_ARGUMENT, this message.
    error = failure(classify, servable, classification_request("nope", 1.0), simple_runner, method_check=False)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "No signature was found with the name: nope")
    # An empty signature name means serving_default (here a predict signature keyed "x": not a classifier).
    error = failure(regress, servable, regression_request("", 1.0), simple_runner, method_check=False)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith("No regression inputs found in SignatureDef: ")
    assert 'key: "x"' in error.message


def test_method_names_are_checked_only_with_the_flag(tf1_model):
    servable = tf1_model[2]
    # classifier.cc: with the check on, a regress signature is refused by Classify ...
    error = failure(classify, servable, classification_request("regress_x_to_y", 2.0), simple_runner, method_check=True)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "Expected classification signature method_name to be tensorflow/serving/classify. "
                                           "Was: tensorflow/serving/regress")
    error = failure(regress, servable, regression_request("classify_x_to_y", 2.0), simple_runner, method_check=True)
    assert error.message == ("Expected regression signature method_name to be tensorflow/serving/regress. "
                             "Was: tensorflow/serving/classify")
    # ... and with it off, only the aliases count: "classify_x_to_y" has no "outputs" alias,
    # "regress_x_to_y" has no "classes"/"scores" alias.
    error = failure(regress, servable, regression_request("classify_x_to_y", 2.0), simple_runner, method_check=False)
    assert error.message.startswith("No regression outputs found in SignatureDef: ")
    error = failure(classify, servable, classification_request("regress_x_to_y", 2.0), simple_runner, method_check=False)
    assert error.message.startswith('Expected classification signature outputs to contain at least one of "classes" or '
                                    '"scores". Signature was: ')
    # regress_x2_to_y3 takes the parsed float x2, not serialized examples: what a Session answers.
    error = failure(regress, servable, regression_request("regress_x2_to_y3", 2.0), simple_runner, method_check=True)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but string is provided")


# -- MultiInference on the TF1 model ----------------------------------------------------------------

def multi_request(*tasks: tuple[str, str], model: str = "half_plus_two", xs: tuple[float, ...] = (2.0,)):
    request = inference_pb2.MultiInferenceRequest()
    for x in xs:
        request.input.example_list.examples.add().CopyFrom(example(x=x))
    for signature, method in tasks:
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = method
    return request


def test_multi_inference_runs_every_task_on_the_shared_input(tf1_model):
    servable = tf1_model[2]
    # multi_inference_test.cc RegressAndClassifySignaturesTest / MultipleValidRegressSignaturesTest:
    # x=2 -> regress_x_to_y 3.0, regress_x_to_y2 4.0, classify_x_to_y score 3.0; each result carries the
    # task's model spec with the served version.
    request = multi_request(("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS), ("classify_x_to_y", CLASSIFY))
    assert multi_inference_model_spec(request).name == "half_plus_two"
    response = multi_inference(servable, request, simple_runner, method_check=True)
    assert [r.WhichOneof("result") for r in response.results] == ["regression_result", "regression_result",
                                                                  "classification_result"]
    assert [v.value for v in response.results[0].regression_result.regressions] == [3.0]
    assert [v.value for v in response.results[1].regression_result.regressions] == [4.0]
    assert [c.score for c in response.results[2].classification_result.classifications[0].classes] == [3.0]
    assert [(r.model_spec.name, r.model_spec.signature_name, r.model_spec.version.value) for r in response.results] == [
        ("half_plus_two", "regress_x_to_y", 1), ("half_plus_two", "regress_x_to_y2", 1), ("half_plus_two", "classify_x_to_y", 1)]


@pytest.mark.parametrize("tasks, code, message", [
    # multi_inference.cc, in the order it checks.
    ([("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS)], grpc.StatusCode.INVALID_ARGUMENT,
     "Duplicate evaluation of signature: regress_x_to_y"),
    ([("ThisSignatureDoesNotExist", REGRESS)], grpc.StatusCode.INVALID_ARGUMENT,
     "Requested signature not found in model graph: ThisSignatureDoesNotExist"),
    ([("serving_default", PREDICT)], grpc.StatusCode.UNIMPLEMENTED, "Unsupported signature method_name: tensorflow/serving/predict"),
    ([("regress_x_to_y", REGRESS), ("regress_x2_to_y3", REGRESS)], grpc.StatusCode.INVALID_ARGUMENT,
     "Input tensor must be the same for all Signatures."),
    ([("regress_x_to_y", CLASSIFY)], grpc.StatusCode.INVALID_ARGUMENT,
     "Expected classification signature method_name to be tensorflow/serving/classify. Was: tensorflow/serving/regress"),
])
def test_multi_inference_rules(tf1_model, tasks, code, message):
    error = failure(multi_inference, tf1_model[2], multi_request(*tasks), simple_runner, method_check=True)
    assert (error.code, error.message) == (code, message)


def test_multi_inference_model_names_and_empty_input(tf1_model):
    servable = tf1_model[2]
    request = multi_request(("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS))
    request.tasks[1].model_spec.name = "ModelDoesNotExist"
    error = failure(multi_inference, servable, request, simple_runner, method_check=True)
    assert error.message == "All ModelSpecs in a MultiInferenceRequest must access the same model name."
    request.tasks[0].model_spec.name = ""
    assert failure(multi_inference, servable, request, simple_runner, method_check=True).message == \
        "Found ModelSpec with an empty model name."
    # MissingInputTest: tasks are checked first, then the input.
    error = failure(multi_inference, servable, multi_request(("regress_x_to_y", REGRESS), xs=()), simple_runner, method_check=True)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    # No task: the servable is looked up with an empty ModelSpec (multi_inference_helper.cc).
    assert multi_inference_model_spec(inference_pb2.MultiInferenceRequest()).name == ""


# -- a TF2 model (method tensorflow/serving/predict everywhere) --------------------------------------

def test_tf2_signatures_classify_and_regress_only_without_the_method_check(tf2_model):
    servable = tf2_model[1]
    assert servable.signatures["classify"].method_name == PREDICT
    # The engine's own runner (TF errors -> gRPC codes), as core.py passes it.
    response = classify(servable, classification_request("classify", 2.0, 4.0, model="tf2_half_plus_two"),
                        predict.run_signature, method_check=False)
    assert [[(c.label, c.score) for c in r.classes] for r in response.result.classifications] == \
        [[("neg", -3.0), ("pos", 3.0)], [("neg", -4.0), ("pos", 4.0)]]
    assert (response.model_spec.signature_name, response.model_spec.version.value) == ("classify", 7)
    response = regress(servable, regression_request("", 2.0, model="tf2_half_plus_two"), predict.run_signature,
                       method_check=False)
    assert [r.value for r in response.result.regressions] == [3.0]
    assert response.model_spec.signature_name == "serving_default"
    request = multi_request(("classify", CLASSIFY), model="tf2_half_plus_two")
    response = multi_inference(servable, request, predict.run_signature, method_check=False)
    assert [c.score for c in response.results[0].classification_result.classifications[0].classes] == [-3.0, 3.0]
    # Each TF2 signature has its own input placeholder, so two of them cannot share the input.
    request = multi_request(("classify", CLASSIFY), ("regress", REGRESS), model="tf2_half_plus_two")
    error = failure(multi_inference, servable, request, predict.run_signature, method_check=False)
    assert error.message == "Input tensor must be the same for all Signatures."

    # util.h: the check exists because native TF2 models use a fixed method_name; with it on they are refused.
    error = failure(classify, servable, classification_request("classify", 2.0, model="tf2_half_plus_two"),
                    predict.run_signature, method_check=True)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           "Expected classification signature method_name to be tensorflow/serving/classify. "
                                           "Was: tensorflow/serving/predict")
    error = failure(regress, servable, regression_request("regress", 2.0, model="tf2_half_plus_two"),
                    predict.run_signature, method_check=True)
    assert error.message == ("Expected regression signature method_name to be tensorflow/serving/regress. "
                             "Was: tensorflow/serving/predict")


def test_tf2_aliases_and_output_types_follow_tf_servings_checks(tf2_model):
    servable = tf2_model[1]
    # classifier.cc / regressor.cc find the input by the alias "inputs" (kRegressInputs): another alias
    # is refused even when it is the only input.
    error = failure(regress, servable, regression_request("other_alias", 2.0, model="tf2_half_plus_two"),
                    predict.run_signature, method_check=False)
    assert error.message.startswith("No regression inputs found in SignatureDef: ")
    # regressor.cc PostProcessRegressionResult: float outputs only (two spaces after the period).
    error = failure(regress, servable, regression_request("int_outputs", 2.0, model="tf2_half_plus_two"),
                    predict.run_signature, method_check=False)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, "Expected output Tensor of DT_FLOAT.  Got: DT_INT64")
    # The engine's runner maps the model's own failure (ParseExample: missing "x") to INVALID_ARGUMENT.
    request = regression_request("regress", model="tf2_half_plus_two")
    request.input.example_list.examples.add().CopyFrom(example(y=1.0))
    assert failure(regress, servable, request, predict.run_signature, method_check=False).code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("signature, message", [
    # classifier.cc PostProcessClassificationResult: rank, dtype, then batch size against the examples sent.
    ("first_only", "Expected scores output batch size of 2. Got: 1"),
    ("float_classes", "Expected classes Tensor of DT_STRING. Got: DT_FLOAT"),
    ("flat_scores", "Expected Tensor shape: [batch_size num_classes] but got [2]"),
])
def test_classification_outputs_are_checked_as_tf_serving_checks_them(tf2_model, signature, message):
    request = classification_request(signature, 2.0, 4.0, model="tf2_half_plus_two")
    error = failure(classify, tf2_model[1], request, predict.run_signature, method_check=False)
    assert (error.code, error.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)
