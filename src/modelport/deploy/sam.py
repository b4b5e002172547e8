"""``template.yaml``: an AWS SAM template for a Lambda package, beside it.

    write_template(folder, sam_template(config, models, image="digits:1"))

One function behind an HTTP API (payload format 2.0, every route to it), with the memory,
timeout, architecture and ``/tmp`` size of the LambdaConfig. An image function names its local
tag and how ``sam build`` remakes it; a zip function its runtime, handler and the zip.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import modelport
from modelport.errors import require

if TYPE_CHECKING:
    from modelport.deploy.lambda_limits import LambdaConfig

HANDLER = "modelport.serverless.handler.handler"
FUNCTION = "ModelsFunction"


def sam_template(
    config: LambdaConfig, refs: list[str], environment: dict[str, str], *,
    image: str | None = None, code: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The template of a function from ``image`` (a tag) or ``code`` (a zip's path)."""
    properties: dict[str, Any] = {
        "MemorySize": config.memory_mb,
        "Timeout": config.timeout_s,
        "Architectures": [config.architecture],
        "EphemeralStorage": {"Size": config.tmp_mb},
        "Events": {
            "Api": {
                "Type": "HttpApi",
                "Properties": {"Path": "/{proxy+}", "Method": "ANY", "PayloadFormatVersion": "2.0"},
            }
        },
    }
    if environment:
        properties["Environment"] = {"Variables": environment}
    metadata: dict[str, Any] = {}
    if image is not None:
        properties["PackageType"] = "Image"
        properties["ImageUri"] = image
        last = image.rpartition("/")[2]
        tag = last.rpartition(":")[2] if ":" in last else "latest"
        metadata = {"DockerContext": ".", "Dockerfile": "Containerfile", "DockerTag": tag}
    else:
        properties["PackageType"] = "Zip"
        properties["Runtime"] = f"python{config.python}"
        properties["Handler"] = HANDLER
        properties["CodeUri"] = code
    function: dict[str, Any] = {"Type": "AWS::Serverless::Function", "Properties": properties}
    if metadata:
        function["Metadata"] = metadata
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Transform": "AWS::Serverless-2016-10-31",
        "Description": f"modelport {modelport.__version__}: {', '.join(refs)} on AWS Lambda",
        "Resources": {FUNCTION: function},
        "Outputs": {
            "Endpoint": {
                "Description": "The HTTP API's URL: the Open Inference Protocol routes under it",
                "Value": {
                    "Fn::Sub": "https://${ServerlessHttpApi}.execute-api.${AWS::Region}."
                    "${AWS::URLSuffix}/"
                },
            }
        },
    }


def write_template(folder: Path, template: dict[str, Any]) -> Path:
    require("yaml", "deploy")
    import yaml

    path = folder / "template.yaml"
    path.write_text(yaml.safe_dump(template, sort_keys=False, width=100))
    return path
