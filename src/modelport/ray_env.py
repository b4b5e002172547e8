"""Ray's settings that live in the environment, which Ray reads when it is first imported:
every caller sets them with ``loopback()`` before ``import ray``.

Ray otherwise swaps 127.0.0.1 for the machine's external address, so that a local cluster's
traffic leaves loopback, and reports usage home.
"""

from __future__ import annotations

import os

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def loopback() -> None:
    """Set RAY_ENV, each unless the user set it: before Ray is first imported."""
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
