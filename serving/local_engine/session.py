"""SavedModels loaded as TF Serving loads them: into a Session, signatures run by tensor names.

TF Serving loads every SavedModel, TF1 graph or TF2 export, with LoadSavedModel: the MetaGraph whose tags
equal the requested set, its variables restored into a Session, its init op (``__saved_model_init_op``,
main_op or legacy_init_op) run with the asset paths fed. Predict then runs the SignatureDef's tensors by
the names it lists (Session::Run), and GetModelMetadata copies every SignatureDef of that MetaGraph
(get_model_metadata_impl.cc, SavedModelGetSignatureDef). This module does the same with TensorFlow's
SavedModel loader for Sessions.

Why a Session for TF2 exports too, and not ``tf.saved_model.load``:
- It is what TF Serving runs, so a model answers and fails as it does there: shapes fed as sent, the
  kernels' own messages, every SignatureDef in the metadata.
- ``tf.saved_model.load`` re-imports a TF1 graph as functions (load_v1_in_v2) and sets the signature's
  TensorInfo shapes on its tensors, so it fails on graphs that a Session runs fine (TF1-era exports whose
  TensorInfos carry no shape: read as scalars, "Shapes must be equal rank, but are 2 and 0").
- A Session callable costs a fraction of an eager signature call: on bench/serving.py's small model, 11 us
  of thread CPU per call in a loop against 120-146 us, and 95 us against 274-281 us with the caller idle
  between calls. With ``inter_op_parallelism_threads`` below 0 its ops run on the calling thread, with no
  hand-off to a pool thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfship.serving.local_engine.models import InputSpec, SignatureEntry

log = logging.getLogger(__name__)


def _read_saved_model(path: Path) -> Any:
    """The SavedModel proto from saved_model.pb or saved_model.pbtxt (TF's own reader)."""
    from tensorflow.python.saved_model import loader_impl

    return loader_impl.parse_saved_model(str(path))


def _written_by_tf1(saved_model: Any) -> bool:
    """TF's rule (tensorflow/python/saved_model/load.py, ``load_partial``): a SavedModel holds TF2 objects
    only if it has exactly one MetaGraph and that MetaGraph has an ``object_graph_def``."""
    return not (len(saved_model.meta_graphs) == 1 and saved_model.meta_graphs[0].HasField("object_graph_def"))


def is_tf1_saved_model(path: Path) -> bool:
    """True when ``tf.saved_model.load`` would fall back to load_v1_in_v2 for ``path`` (a TF1 graph)."""
    return _written_by_tf1(_read_saved_model(Path(path)))


def tags_not_found_message(tags: Iterable[str]) -> str:
    # TensorFlow's reader (tensorflow/cc/saved_model/reader.cc, FindMetaGraphDef), which TF Serving's
    # loader reports as is; the C++ joins an unordered set, sorted here so the message is stable.
    return ("Could not find meta graph def matching supplied tags: { " + " ".join(sorted(tags)) +
            " }. To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")


def _spec(alias: str, info: Any) -> InputSpec:
    import tensorflow as tf

    shape: tuple[int | None, ...] | None
    # TF1-era exporters wrote TensorInfos without a shape; an absent shape is unknown, not a scalar.
    if not info.HasField("tensor_shape") or info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
    return InputSpec(alias, tf.as_dtype(info.dtype) if info.dtype else tf.string, shape)


def _as_array(value: Any) -> Any:
    import numpy as np

    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)


def _as_output(value: Any) -> Any:
    """A fetched tensor as an array: the Session gives a scalar as a numpy scalar, or as bytes for a string."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value
    return np.array(value, dtype=object) if isinstance(value, bytes) else np.asarray(value)


def status_message(message: str) -> str:
    """The runtime's own status text, which TF Serving answers with.

    Python's Session.run puts "Graph execution error:", where the node was defined and "Node: '...'"
    before it (tensorflow/python/client/session.py, ``_do_call`` and error_interpolation).
    """
    if not message.startswith("Graph execution error:"):
        return message
    lines = message.split("\n")
    for index, line in enumerate(lines):
        if line.startswith("Node: '"):
            return "\n".join(lines[index + 1:]) or message
    return message


class SessionModel:
    """Owns the Graph and Session of one loaded SavedModel; ``close()`` releases them."""

    def __init__(self, path: Path, graph: Any, session: Any, meta_graph: Any) -> None:
        self.path = path
        self.graph = graph
        self.session = session
        self.meta_graph = meta_graph
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.session.close()

    def __enter__(self) -> SessionModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def signature_fn(self, key: str, signature: Any) -> Any:
        """A callable taking the signature's inputs by alias and returning its outputs by alias (numpy).

        Runs as TF Serving's Predict runs a signature: Session::Run with the request's tensors fed by the
        signature's tensor names, as sent. A Session callable (``_make_callable_from_options``: one per set
        of fed inputs, made on first use) feeds them through TensorFlow's C API with no check in Python;
        ``Session.run`` refuses, before any op runs, a shape the placeholder does not declare ("Cannot feed
        value of shape", tensorflow/python/client/session.py), which TF Serving's Session runs.
        """
        import tensorflow as tf
        from tensorflow.core.protobuf import config_pb2

        feeds = {alias: info.name for alias, info in signature.inputs.items()}
        fetch_aliases = sorted(signature.outputs)
        fetches = [signature.outputs[alias].name for alias in fetch_aliases]
        unsupported = [alias for alias, info in [*signature.inputs.items(), *signature.outputs.items()]
                       if info.WhichOneof("encoding") != "name"]
        session = self.session
        make: Any = getattr(session, "_make_callable_from_options", None)  # TensorFlow's private API: absent, Session.run
        callables: dict[tuple[str, ...], Any] = {}
        lock = threading.Lock()

        def callable_for(aliases: tuple[str, ...]) -> Any:
            found = callables.get(aliases)
            if found is None:
                with lock:
                    found = callables.get(aliases)
                    if found is None:
                        options = config_pb2.CallableOptions(feed=[feeds[alias] for alias in aliases], fetch=fetches)
                        found = callables[aliases] = make(options)
            return found

        def run(**inputs: Any) -> dict[str, Any]:
            if unsupported:
                # Sparse and composite encodings have no single tensor name; TF Serving's Predict feeds
                # and fetches by ``name`` only, so such signatures cannot be served there either.
                raise tf.errors.UnimplementedError(None, None, f"signature '{key}': tensors {sorted(unsupported)} are "
                                                               "sparse or composite; only dense tensors are supported")
            if not inputs.keys() <= feeds.keys():
                raise TypeError(f"signature '{key}' got unexpected inputs {sorted(inputs.keys() - feeds.keys())}; "
                                f"it takes {sorted(feeds)}")
            try:
                if make is not None:
                    aliases = tuple(sorted(inputs))
                    values = callable_for(aliases)(*[_as_array(inputs[alias]) for alias in aliases])
                else:
                    values = session.run(fetches, feed_dict={feeds[alias]: _as_array(value) for alias, value in inputs.items()})
            except tf.errors.OpError as exc:
                raise type(exc)(exc.node_def, exc.op, status_message(exc.message)) from None
            return {alias: _as_output(value) for alias, value in zip(fetch_aliases, values)}

        return run


def load_session(path: Path, tags: set[str], *, intra_op_threads: int = 0,
                 inter_op_threads: int = 0) -> tuple[SessionModel, dict[str, SignatureEntry]]:
    """Load the MetaGraph tagged exactly ``tags`` into a Session of its own Graph.

    Runs what TF Serving's loader runs: variables restored, the init op (``__saved_model_init_op``, main_op or
    legacy_init_op: table initializers, assets fed from the SavedModel's assets/ folder). Raises ValueError with TF's
    message when no MetaGraph has exactly these tags. ``inter_op_threads`` below 0 runs each call's ops
    on the calling thread (DirectSession's run_in_caller_thread), as it does for TF Serving's
    --tensorflow_inter_op_parallelism.
    """
    import tensorflow as tf
    from tensorflow.python.saved_model import loader_impl

    path = Path(path)
    wanted = set(tags)
    saved_model = _read_saved_model(path)
    if not any(set(meta.meta_info_def.tags) == wanted for meta in saved_model.meta_graphs):
        raise ValueError(tags_not_found_message(wanted))

    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=intra_op_threads,
                                      inter_op_parallelism_threads=inter_op_threads)
    session = tf.compat.v1.Session(graph=graph, config=config)
    try:
        with graph.as_default():
            meta_graph = loader_impl.SavedModelLoader(str(path)).load(session, sorted(wanted))
        # Serving only runs the graph: nothing may add ops to it from now on (and Session.run is
        # thread-safe on a finalized graph).
        graph.finalize()
    except BaseException:
        session.close()
        raise
    model = SessionModel(path, graph, session, meta_graph)

    from tensorflow.core.protobuf import meta_graph_pb2

    entries: dict[str, SignatureEntry] = {}
    for key, stored in meta_graph.signature_def.items():
        proto = meta_graph_pb2.SignatureDef()
        proto.CopyFrom(stored)
        entries[key] = SignatureEntry(
            key=key,
            fn=model.signature_fn(key, proto),
            inputs={alias: _spec(alias, info) for alias, info in proto.inputs.items()},
            outputs={alias: _spec(alias, info) for alias, info in proto.outputs.items()},
            method_name=proto.method_name,
            proto=proto,
        )
    log.info("loaded %s SavedModel %s (tags %s) into a Session: %d signatures", "TF1" if _written_by_tf1(saved_model) else "TF2",
             path, sorted(wanted), len(entries))
    return model, entries
