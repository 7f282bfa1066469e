"""The PilotNet-style CNN of a Keras 2.2.4 file whose first layer is Lambda(x / 127.5 - 1.0).

tfship refuses to load that Lambda (its bytecode would run, and it was written by Python 3.5 anyway).
This module rebuilds the same architecture in code, with a Rescaling layer computing the same
normalization, so only the weights are read from the file:

    tfship export model.h5 --architecture examples/pilotnet_architecture.py:build --name pilotnet
"""

from __future__ import annotations


def build():
    import keras

    image = keras.Input((68, 204, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(image)
    for filters, kernel, stride in ((24, 5, 2), (36, 5, 2), (48, 5, 2), (64, 3, 1), (64, 3, 1)):
        x = keras.layers.Conv2D(filters, kernel, strides=stride, activation="elu")(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Flatten()(x)
    for units in (100, 50, 10):
        x = keras.layers.Dense(units, activation="elu")(x)
    steering = keras.layers.Dense(1, name="steering")(x)
    return keras.Model(image, steering, name="pilotnet")
