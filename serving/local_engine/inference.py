"""Classify, Regress and MultiInference with TF Serving's checks, messages and result layout.

Sources (tensorflow/serving, tensorflow_serving/servables/tensorflow/):
- classifier.cc: GetClassificationSignatureDef, PreProcessClassification, PostProcessClassificationResult
- regressor.cc: GetRegressionSignatureDef, PreProcessRegression, PostProcessRegressionResult
- multi_inference.cc: TensorFlowMultiInferenceRunner::Infer (tfrt_multi_inference.cc for the model_spec
  of each result)
- util.cc: InputToSerializedExampleTensor ("Input is empty.", context bytes + example bytes),
  MakeModelSpec, and the method-name check feature (model server flag
  ``--enable_signature_method_name_check``).

TF Serving reads input and output aliases from the SignatureDef: "inputs" for the serialized examples,
"classes" / "scores" for classification and "outputs" for regression. A TF2 signature (method
``tensorflow/serving/predict``) passes when the method check is off and its aliases are these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from tfship.serving.local_engine.errors import EngineError, invalid
from tfship.serving.local_engine.models import Servable, SignatureEntry
from tfship.serving.local_engine.predict import tf_type_name

Runner = Callable[[SignatureEntry, dict[str, np.ndarray]], dict[str, np.ndarray]]

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


# -- inputs ---------------------------------------------------------------------------------------

def serialized_examples(input_proto: Any) -> np.ndarray:
    """The request's Input as a [n] string array of serialized tf.Examples (util.cc,
    InputToSerializedExampleTensor): each example of example_list_with_context is the context's
    bytes followed by the example's, so the example's own features win over the context's."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        records = [example.SerializeToString() for example in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        records = [context + example.SerializeToString() for example in with_context.examples]
    else:
        records = []  # kind not set: zero examples
    if not records:
        raise invalid("Input is empty.")
    array = np.empty(len(records), dtype=object)
    array[:] = records
    return array


# -- signatures -----------------------------------------------------------------------------------

def _signature_name(model_spec: Any) -> str:
    return model_spec.signature_name or DEFAULT_SIGNATURE


def _debug_string(signature: Any) -> str:
    return str(signature)  # protobuf text format, as SignatureDef::DebugString


def _find(servable: Servable, name: str) -> SignatureEntry:
    entry = servable.signatures.get(name)
    if entry is None:
        raise invalid(f"No signature was found with the name: {name}")
    return entry


def _check_classification(entry: SignatureEntry, method_check: bool) -> tuple[str, list[str]]:
    """PreProcessClassification: the input alias and the output aliases to read."""
    signature = entry.proto
    if method_check and signature.method_name != CLASSIFY_METHOD:
        raise invalid(f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise invalid(f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
    wanted = [alias for alias in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES) if alias in signature.outputs]
    if not wanted:
        raise invalid(f'Expected classification signature outputs to contain at least one of "{CLASSIFY_OUTPUT_CLASSES}" '
                      f'or "{CLASSIFY_OUTPUT_SCORES}". Signature was: {_debug_string(signature)}')
    return CLASSIFY_INPUTS, wanted


def _check_regression(entry: SignatureEntry, method_check: bool) -> tuple[str, list[str]]:
    """PreProcessRegression: the input alias and the output alias to read."""
    signature = entry.proto
    if method_check and signature.method_name != REGRESS_METHOD:
        raise invalid(f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise invalid(f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid(f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
    return REGRESS_INPUTS, [REGRESS_OUTPUTS]


def _run(run: Runner, entry: SignatureEntry, alias: str, examples: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    dtype = entry.inputs[alias].dtype if alias in entry.inputs else tf.string
    if dtype != tf.string:
        # What a Session answers when a string tensor is fed where the graph wants another type.
        raise invalid(f"Expects arg[0] to be {tf_type_name(dtype.name)} but string is provided")
    return run(entry, {alias: examples})


# -- outputs --------------------------------------------------------------------------------------

def _type_name(array: np.ndarray) -> str:
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    try:
        return str(types_pb2.DataType.Name(tf.as_dtype(array.dtype).as_datatype_enum))
    except TypeError:
        return str(array.dtype)


def _is_string(array: np.ndarray) -> bool:
    return array.dtype == object or array.dtype.kind in "SU"


def _shape_string(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"  # TensorShape::DebugString


def _fetched(outputs: dict[str, np.ndarray], alias: str, expected: int) -> np.ndarray:
    if alias not in outputs:
        raise invalid(f"Expected {expected} output tensor(s).  Got: {len(outputs)}")
    return outputs[alias]


def _label(value: Any) -> str:
    # TF Serving copies the bytes; a proto3 string field here must be valid UTF-8.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _classification_result(outputs: dict[str, np.ndarray], wanted: list[str], num_examples: int, result: Any) -> None:
    """PostProcessClassificationResult."""
    classes = _fetched(outputs, CLASSIFY_OUTPUT_CLASSES, len(wanted)) if CLASSIFY_OUTPUT_CLASSES in wanted else None
    scores = _fetched(outputs, CLASSIFY_OUTPUT_SCORES, len(wanted)) if CLASSIFY_OUTPUT_SCORES in wanted else None
    if classes is not None:
        if classes.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape_string(classes)}")
        if not _is_string(classes):
            raise invalid(f"Expected classes Tensor of DT_STRING. Got: {_type_name(classes)}")
        if classes.shape[0] != num_examples:
            raise invalid(f"Expected classes output batch size of {num_examples}. Got: {classes.shape[0]}")
    if scores is not None:
        if scores.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {_shape_string(scores)}")
        if scores.dtype != np.float32:
            raise invalid(f"Expected scores Tensor of DT_FLOAT. Got: {_type_name(scores)}")
        if scores.shape[0] != num_examples:
            raise invalid(f"Expected scores output batch size of {num_examples}. Got: {scores.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}")
    shaped = classes if classes is not None else scores
    num_classes = shaped.shape[1] if shaped is not None else 0
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            item = classifications.classes.add()
            if classes is not None:
                item.label = _label(classes[i, c])
            if scores is not None:
                item.score = float(scores[i, c])


def _regression_result(outputs: dict[str, np.ndarray], num_examples: int, result: Any) -> None:
    """PostProcessRegressionResult."""
    if REGRESS_OUTPUTS not in outputs:
        raise invalid(f"Could not find output tensor '{REGRESS_OUTPUTS}'")
    values = outputs[REGRESS_OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape_string(values)}")
    if num_examples != values.shape[0]:
        raise invalid(f"Input batch size did not match output batch size: {num_examples} vs. {values.shape[0]}")
    if values.dtype != np.float32:
        raise invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_type_name(values)}")
    if values.size != num_examples:
        raise invalid(f"Expected output batch size to be {num_examples}.  Got: {values.size}")
    for value in values.reshape(-1):
        result.regressions.add(value=float(value))


def _make_model_spec(target: Any, name: str, signature_name: str, version: int) -> None:
    """util.cc MakeModelSpec: an empty signature name is reported as serving_default."""
    target.Clear()
    target.name = name
    target.signature_name = signature_name or DEFAULT_SIGNATURE
    target.version.value = version


# -- the three APIs -------------------------------------------------------------------------------

def classify(servable: Servable, request: Any, run: Runner, *, method_check: bool) -> Any:
    """ClassificationRequest -> ClassificationResponse (classifier.cc RunClassify)."""
    from tensorflow_serving.apis import classification_pb2

    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")  # classification_service.cc
    entry = _find(servable, _signature_name(request.model_spec))
    alias, wanted = _check_classification(entry, method_check)
    response = classification_pb2.ClassificationResponse()
    _make_model_spec(response.model_spec, request.model_spec.name, request.model_spec.signature_name, servable.version)
    examples = serialized_examples(request.input)
    outputs = _run(run, entry, alias, examples)
    _classification_result(outputs, wanted, len(examples), response.result)
    return response


def regress(servable: Servable, request: Any, run: Runner, *, method_check: bool) -> Any:
    """RegressionRequest -> RegressionResponse (regressor.cc RunRegress)."""
    from tensorflow_serving.apis import regression_pb2

    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")  # regression_service.cc
    entry = _find(servable, _signature_name(request.model_spec))
    alias, _ = _check_regression(entry, method_check)
    response = regression_pb2.RegressionResponse()
    _make_model_spec(response.model_spec, request.model_spec.name, request.model_spec.signature_name, servable.version)
    examples = serialized_examples(request.input)
    outputs = _run(run, entry, alias, examples)
    _regression_result(outputs, len(examples), response.result)
    return response


def multi_inference_model_spec(request: Any) -> Any:
    """The ModelSpec that picks the servable (multi_inference_helper.cc GetModelSpecFromRequest): the
    first task's, or an empty one (whose lookup fails as an unknown model)."""
    from tensorflow_serving.apis import model_pb2

    if request.tasks and request.tasks[0].HasField("model_spec"):
        return request.tasks[0].model_spec
    return model_pb2.ModelSpec()


def multi_inference(servable: Servable, request: Any, run: Runner, *, method_check: bool) -> Any:
    """MultiInferenceRequest -> MultiInferenceResponse (multi_inference.cc).

    TF Serving feeds the shared input once and fetches every task's outputs in one Session run; here
    each task's signature runs once on the same examples (the signatures are distinct, so no task
    runs twice), which gives the same results for models without random ops.
    """
    from tensorflow_serving.apis import inference_pb2

    model_name = ""
    input_tensor_name = ""
    seen: set[str] = set()
    plan: list[tuple[Any, str, SignatureEntry, str, list[str]]] = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = _signature_name(task.model_spec)
        if name in seen:
            raise invalid(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        entry = servable.signatures.get(name)
        if entry is None:
            raise invalid(f"Requested signature not found in model graph: {name}")
        if task.method_name == CLASSIFY_METHOD:
            alias, wanted = _check_classification(entry, method_check)
        elif task.method_name == REGRESS_METHOD:
            alias, wanted = _check_regression(entry, method_check)
        else:
            raise EngineError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
        tensor_name = entry.proto.inputs[alias].name
        if not input_tensor_name:
            input_tensor_name = tensor_name
        elif input_tensor_name != tensor_name:
            raise invalid("Input tensor must be the same for all Signatures.")
        plan.append((task, name, entry, alias, wanted))

    examples = serialized_examples(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, name, entry, alias, wanted in plan:
        outputs = _run(run, entry, alias, examples)
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            _classification_result(outputs, wanted, len(examples), result.classification_result)
        else:
            _regression_result(outputs, len(examples), result.regression_result)
        _make_model_spec(result.model_spec, task.model_spec.name, name, servable.version)
    return response
