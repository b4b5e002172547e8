"""Digits recognizer with Python pre- and post-processing around an ONNX classifier.

Takes 8x8 grayscale images with pixel values 0-255 (what a camera or canvas gives), scales them
to the 0-16 range the classifier was trained on, and returns the digit, the confidence and the
digit's name.
"""

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

import modelport

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


class DigitsReader:
    signature: ClassVar[dict[str, Any]] = {
        "inputs": [{"name": "image", "dtype": "uint8", "shape": [-1, 8, 8]}],
        "outputs": [
            {"name": "digit", "dtype": "int64", "shape": [-1]},
            {"name": "confidence", "dtype": "float32", "shape": [-1]},
            {"name": "name", "dtype": "string", "shape": [-1]},
        ],
    }

    def load(self, path: Path) -> None:
        self.classifier = modelport.load(path / "classifier.onnx")

    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch["image"].reshape(len(batch["image"]), 64).astype(np.float32) * (16 / 255)
        probabilities = self.classifier.predict(pixels)["probabilities"]
        digit = probabilities.argmax(axis=1).astype(np.int64)
        return {
            "digit": digit,
            "confidence": probabilities.max(axis=1).astype(np.float32),
            "name": NAMES[digit].astype(object),
        }

    def close(self) -> None:
        self.classifier.close()
