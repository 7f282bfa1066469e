"""Train a small CNN on scikit-learn's bundled digits (8x8 images, 10 classes; no download) and save it.

Writes, into --out (default examples/build):
  digits_cnn.keras   Keras 3 native file
  digits_cnn.h5      the same model as legacy HDF5 (what many tutorials still produce)
  digits_samples.npz held-out test images (key "image"), used as --samples for the parity check
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_model():
    import keras

    image = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(image)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    probabilities = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(image, probabilities, name="digits_cnn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("examples/build"))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--force", action="store_true", help="retrain even if the files exist")
    args = parser.parse_args(argv)
    targets = [args.out / n for n in ("digits_cnn.keras", "digits_cnn.h5", "digits_samples.npz")]
    if all(t.exists() for t in targets) and not args.force:
        print(f"example model already trained in {args.out} (--force retrains)", file=sys.stderr)
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(7)
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=0.2, random_state=7,
                                                        stratify=digits.target)
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0, validation_split=0.1)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "digits_cnn.keras")
    model.save(args.out / "digits_cnn.h5")
    np.savez(args.out / "digits_samples.npz", image=x_test[:128])
    print(f"trained digits CNN: test accuracy {accuracy:.3f}; saved to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
