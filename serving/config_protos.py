"""TF Serving configuration messages that the tensorflow-serving-api wheel does not ship.

``SSLConfig`` (tensorflow_serving/config/ssl_config.proto), ``MonitoringConfig``
(monitoring_config.proto) and ``BatchingParameters`` (servables/tensorflow/session_bundle_config.proto)
are read by ``tensorflow_model_server`` as text protos; they are declared here with the official field
names, numbers and types, in tfship's one private descriptor pool (``tfship.core.protos.POOL``), so
tfship writes and parses the same text format.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from tfship.core.protos import add_field, add_file, message_class

_fp = descriptor_pb2.FileDescriptorProto(name="tfship/serving_config.proto", package="tensorflow.serving", syntax="proto3")
_fp.dependency.append("google/protobuf/wrappers.proto")

_ssl = _fp.message_type.add(name="SSLConfig")
add_field(_ssl, "server_key", 1, "string")
add_field(_ssl, "server_cert", 2, "string")
add_field(_ssl, "custom_ca", 3, "string")
add_field(_ssl, "client_verify", 4, "bool")

_prom = _fp.message_type.add(name="PrometheusConfig")
add_field(_prom, "enable", 1, "bool")
add_field(_prom, "path", 2, "string")

_mon = _fp.message_type.add(name="MonitoringConfig")
add_field(_mon, "prometheus_config", 1, "message", type_name=".tensorflow.serving.PrometheusConfig")

_batch = _fp.message_type.add(name="BatchingParameters")
add_field(_batch, "max_batch_size", 1, "message", type_name=".google.protobuf.Int64Value")
add_field(_batch, "batch_timeout_micros", 2, "message", type_name=".google.protobuf.Int64Value")
add_field(_batch, "max_enqueued_batches", 3, "message", type_name=".google.protobuf.Int64Value")
add_field(_batch, "num_batch_threads", 4, "message", type_name=".google.protobuf.Int64Value")
add_field(_batch, "thread_pool_name", 5, "message", type_name=".google.protobuf.StringValue")
add_field(_batch, "allowed_batch_sizes", 6, "int64", repeated=True, packed=True)
add_field(_batch, "pad_variable_length_inputs", 7, "bool")

add_file(_fp)

SSLConfig = message_class("tensorflow.serving.SSLConfig")
MonitoringConfig = message_class("tensorflow.serving.MonitoringConfig")
BatchingParameters = message_class("tensorflow.serving.BatchingParameters")
