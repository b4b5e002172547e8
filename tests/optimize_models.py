"""Models the optimize tests share, built once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import modelport
from modelport.demo import build_torch_cnn


def digits_cnn_repo(factory: pytest.TempPathFactory) -> Path:
    """A repository with the demo's digits CNN, trained for 2 epochs instead of 12 (about
    95-98% accurate), and ``digits.npy`` / ``digits.npz`` (with labels ``y``) beside it."""
    root = factory.getbasetemp() / "optimize-digits-cnn"
    if not (root / "models" / "digits-cnn").is_dir():
        import torch
        from sklearn.datasets import load_digits

        repo = modelport.Repository.init(root / "models")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny convolutions: one thread is several times faster
        try:
            build_torch_cnn(repo, epochs=2)
        finally:
            torch.set_num_threads(threads)
        x, y = load_digits(return_X_y=True)
        images = (x / 16).reshape(-1, 1, 8, 8).astype(np.float32)
        np.save(root / "digits.npy", images)
        np.savez(root / "digits.npz", input=images, y=y)
    return root
