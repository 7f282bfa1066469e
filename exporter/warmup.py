"""TF Serving warmup records: assets.extra/tf_serving_warmup_requests, a TFRecord of PredictionLog."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_RECORDS = 1000  # TF Serving refuses more
DEFAULT_RECORDS = 10


def write(path: Path, model_name: str, inputs: dict[str, np.ndarray], records: int = DEFAULT_RECORDS) -> int:
    """One Predict request of batch 1 per sample, for the first ``records`` samples. Returns the count."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    from tfship.core.codec import to_tensor_proto

    count = min(records, MAX_RECORDS, len(next(iter(inputs.values()))))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(count):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = "serving_default"
            for name, value in inputs.items():
                to_tensor_proto(value[i:i + 1], request.inputs[name])
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return count

