"""The service on AWS Lambda: API Gateway and function URL events in, the REST door's answers out.

    handler.py   the module Lambda imports (``modelport.serverless.handler.handler``): models
                 load once per execution environment, at init
    app.py       LambdaApp: one event through the service's own ASGI app, in process
    events.py    API Gateway HTTP API (payload 2.0), REST API (1.0) and function URL events to
                 HTTP requests, and answers back to what Lambda returns

``modelport build --lambda`` (an image) and ``--lambda-zip`` (a zip package) ship it.
"""
