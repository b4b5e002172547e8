"""The module Lambda runs: handler ``modelport.serverless.handler.handler``.

Importing it is the function's init, once per execution environment (what Lambda reports as
"Init Duration"): it reads ``MODELPORT_REPOSITORY`` and the other settings of app.py's
``lambda_config`` from the function's environment, Lambda's own configuration, and loads every
model version there. Each invocation then only predicts. Import it nowhere else.
"""

from __future__ import annotations

import os
from typing import Any

from modelport.serverless.app import LambdaApp, lambda_config, repository_from

app = LambdaApp.start(repository_from(os.environ), lambda_config(os.environ))


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Answer an API Gateway (payload 2.0 or 1.0) or function URL event."""
    return app(event, context)
