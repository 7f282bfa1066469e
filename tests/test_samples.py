"""Generated samples exercise the model: ids for what an Embedding or a lookup reads, the float
distribution whose outputs vary, and a golden set that still does not vary is named as degenerate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_model

from tfship.core import samples
from tfship.core.signature import Signature, TensorSpec
from tfship.exporter.sample_design import check_outputs, design_samples, id_ranges


def _loaded(model, tmp_path):
    from tfship.exporter.keras_model import from_keras_model

    return from_keras_model(model, "keras", tmp_path / "model.keras")


def _text_classifier(dtype: str = "float32"):
    import keras

    keras.utils.set_random_seed(2)
    tokens = keras.Input((12,), dtype=dtype, name="tokens")
    x = keras.layers.Embedding(500, 8, name="embedding")(tokens)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(3, activation="softmax", name="sentiment")(x))


def test_float_input_feeding_an_embedding_gets_token_ids_and_outputs_that_vary(tmp_path):
    loaded = _loaded(_text_classifier(), tmp_path)
    plain = samples.generate_inputs(loaded.signature, 16)
    # What tfship generated before: floats in [0, 1) that the Embedding reads as token 0, every time.
    assert samples.degenerate_outputs(loaded.predict(plain)) == ["sentiment"]

    inputs, report = design_samples(loaded.keras_model, loaded.signature, 16, predict=loaded.predict)
    tokens = inputs["tokens"]
    assert tokens.dtype == np.float32 and np.all(tokens == np.round(tokens))
    assert tokens.min() >= 0 and tokens.max() < 500 and len(np.unique(tokens)) > 50
    assert report["inputs"]["tokens"] == {"kind": "ids", "consumer": "embedding (Embedding)", "range": [0, 500]}
    assert report["degenerate_outputs"] == [] and report["output_spread"]["sentiment"] > 1e-3
    assert report["warnings"] == []
    json.dumps(report)  # it goes into manifest.json


def test_int_input_gets_ids_of_its_own_embedding_not_the_smallest_in_the_model(tmp_path):
    import keras

    words = keras.Input((6,), dtype="int32", name="words")
    shop = keras.Input((1,), dtype="int32", name="shop")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(3000, 4)(words))
    y = keras.layers.Flatten()(keras.layers.Embedding(7, 4)(shop))
    model = keras.Model([words, shop], keras.layers.Dense(1, name="score")(keras.layers.Concatenate()([x, y])))
    loaded = _loaded(model, tmp_path)
    inputs, report = design_samples(model, loaded.signature, 64, predict=loaded.predict)
    assert inputs["words"].max() >= 7 and inputs["words"].max() < 3000
    assert set(np.unique(inputs["shop"])) <= set(range(7))
    assert report["inputs"]["shop"]["range"] == [0, 7]


def test_lookups_and_category_encoding_get_values_they_know(tmp_path):
    import keras

    colour = keras.Input((1,), dtype="string", name="colour")
    size = keras.Input((1,), dtype="int64", name="size")
    store = keras.Input((1,), dtype="int64", name="store")
    a = keras.layers.StringLookup(vocabulary=["red", "green", "blue"], output_mode="one_hot")(colour)
    b = keras.layers.IntegerLookup(vocabulary=[36, 38, 40, 42], output_mode="one_hot")(size)
    c = keras.layers.CategoryEncoding(num_tokens=5, output_mode="one_hot")(store)
    model = keras.Model([colour, size, store], keras.layers.Dense(2, name="out")(keras.layers.Concatenate()([a, b, c])))
    signature = Signature("serving_default", (TensorSpec("colour", "string", (None, 1)), TensorSpec("size", "int64", (None, 1)),
                                              TensorSpec("store", "int64", (None, 1))), ())
    inputs, report = design_samples(model, signature, 40)
    assert set(inputs["colour"].ravel()) <= {b"red", b"green", b"blue"} and len(set(inputs["colour"].ravel())) == 3
    assert set(inputs["size"].ravel().tolist()) <= {36, 38, 40, 42} and inputs["size"].dtype == np.int64
    assert set(inputs["store"].ravel().tolist()) <= set(range(5))
    assert report["inputs"]["colour"]["kind"] == "vocabulary"


def test_wide_saturating_input_gets_the_distribution_whose_outputs_vary(tmp_path):
    import keras

    keras.utils.set_random_seed(4)
    features = keras.Input((5000,), name="tfidf")
    hidden = keras.layers.Dense(32, activation="relu")
    out = keras.layers.Dense(4, activation="softmax", name="label")
    model = keras.Model(features, out(hidden(features)))
    kernel, bias = hidden.get_weights()
    hidden.set_weights([kernel + 0.02, bias])
    kernel, bias = out.get_weights()
    out.set_weights([kernel * 4, bias])
    loaded = _loaded(model, tmp_path)
    assert samples.degenerate_outputs(loaded.predict(samples.generate_inputs(loaded.signature, 32))) == ["label"]

    inputs, report = design_samples(model, loaded.signature, 32, predict=loaded.predict)
    assert report["distribution"] != "uniform"
    assert report["tried"]["uniform"]["label"] <= samples.DEGENERATE_SPREAD
    assert report["degenerate_outputs"] == []
    assert samples.degenerate_outputs(loaded.predict(inputs)) == []


def test_image_model_keeps_uniform_samples(tmp_path):
    import keras

    keras.utils.set_random_seed(3)
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu")(image))
    model = keras.Model(image, keras.layers.Dense(3, activation="softmax", name="digit")(x))
    loaded = _loaded(model, tmp_path)
    inputs, report = design_samples(model, loaded.signature, 16, predict=loaded.predict)
    assert report["distribution"] == "uniform" and inputs["image"].min() >= 0 and inputs["image"].max() < 1
    np.testing.assert_array_equal(inputs["image"], samples.generate_inputs(loaded.signature, 16)["image"])


def test_output_that_never_varies_is_reported_as_degenerate_by_name(tmp_path):
    import keras

    numbers = keras.Input((4,), name="numbers")
    dead = keras.layers.Dense(2, activation="relu", kernel_initializer="zeros", bias_initializer="zeros", name="dead")(numbers)
    alive = keras.layers.Dense(2, name="alive")(numbers)
    model = keras.Model(numbers, [dead, alive])
    loaded = _loaded(model, tmp_path)
    _, report = design_samples(model, loaded.signature, 8, predict=loaded.predict)
    assert report["degenerate_outputs"] == ["dead"]
    assert len(report["warnings"]) == 1 and "'dead'" in report["warnings"][0] and "--samples" in report["warnings"][0]
    given = check_outputs({"dead": np.zeros((5, 2)), "alive": np.arange(10.0).reshape(5, 2)})
    assert given["degenerate_outputs"] == ["dead"]


def test_keras2_config_of_a_real_text_model_is_followed_to_its_embedding():
    architecture = shared_model("sentiment_bilstm_json", "bidirectional_lstm_softmax_architecture.json")
    config = json.loads(architecture.read_text())
    signature = Signature("serving_default", (TensorSpec("embedding_1_input", "float32", (None, 42)),), ())
    ranges = id_ranges(config, signature)
    assert set(ranges) == {"embedding_1_input"}
    assert ranges["embedding_1_input"].consumer.endswith("(Embedding)") and ranges["embedding_1_input"].high > 1000


def test_tf_keras_functional_model_through_reshape_and_masking(tmp_path):
    import tf_keras

    tokens = tf_keras.Input((10,), name="tokens")
    x = tf_keras.layers.Reshape((10,))(tokens)
    x = tf_keras.layers.Embedding(40, 4, mask_zero=True)(x)
    model = tf_keras.Model(tokens, tf_keras.layers.Dense(1, name="y")(tf_keras.layers.LSTM(4)(x)))
    signature = Signature("serving_default", (TensorSpec("tokens", "float32", (None, 10)),), ())
    inputs, report = design_samples(model, signature, 20)
    assert report["inputs"]["tokens"]["range"] == [1, 40]  # mask_zero: id 0 is padding
    assert inputs["tokens"].min() >= 1 and inputs["tokens"].max() < 40


def test_without_a_model_samples_are_what_generate_inputs_gives():
    signature = Signature("serving_default", (TensorSpec("x", "float32", (None, 3)), TensorSpec("k", "int32", (None,))), ())
    inputs, report = design_samples(None, signature, 5)
    expected = samples.generate_inputs(signature, 5)
    for name in ("x", "k"):
        np.testing.assert_array_equal(inputs[name], expected[name])
    assert report["distribution"] == "uniform" and report["degenerate_outputs"] == []


@pytest.mark.parametrize("distribution", samples.DISTRIBUTIONS)
def test_float_distributions_are_deterministic_and_shaped(distribution):
    signature = Signature("serving_default", (TensorSpec("x", "float32", (None, 200)),), ())
    a = samples.generate_inputs(signature, 4, distribution=distribution)["x"]
    b = samples.generate_inputs(signature, 4, distribution=distribution)["x"]
    assert a.shape == (4, 200) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    if distribution == "scaled":
        assert a.max() < 1 / 200
    if distribution == "sparse":
        assert 0.02 < np.mean(a != 0) < 0.2


def test_dict_inputs_are_followed_by_key(tmp_path):
    import keras

    inputs = {"words": keras.Input((5,), name="words"), "age": keras.Input((1,), name="age")}
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(60, 3)(inputs["words"]))
    model = keras.Model(inputs, {"score": keras.layers.Dense(1, name="score")(keras.layers.Concatenate()([x, inputs["age"]]))})
    signature = Signature("serving_default", (TensorSpec("age", "float32", (None, 1)), TensorSpec("words", "float32", (None, 5))), ())
    designed, report = design_samples(model, signature, 30)
    assert report["inputs"]["words"]["range"] == [0, 60] and report["inputs"]["age"] == {"kind": "float"}
    assert designed["words"].max() >= 1 and np.all(designed["words"] == np.round(designed["words"]))
