"""The HTTP service (``sdrt serve``): an OpenAI-style images API over one Pipeline.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client, python-multipart);
``import sdrt`` never imports this package. The parts, one concern a file:

- ``config.py``     ServeConfig and Limits (frozen), what a deployer sets
- ``errors.py``     ApiError and OpenAI's JSON error object
- ``params.py``     request bodies -> checked sdrt Requests (the Request's own checks)
- ``admission.py``  the bounded queue and the worker threads that run the pipeline
- ``jobs.py``       one generation run on a worker, its events handed to the event loop
- ``state.py``      load, warm-up, readiness and draining of one replica
- ``metrics.py``    the Prometheus metrics
- ``encode.py``     images -> base64 PNGs with their A1111 parameters
- ``uploads.py``    uploaded images and masks, held to the limits
- ``control.py``    ControlNet's control images (base64 or uploads) and settings, counted
- ``auth.py``       the bearer token, compared in constant time
- ``middleware.py`` body limits (413), request metrics, the replica header (pure ASGI)
- ``respond.py``    admit, wait, answer: JSON or server-sent events; 429, 504, disconnects
- ``app.py``        the FastAPI app: routes and error handlers
- ``server.py``     uvicorn with a SIGTERM drain
- ``ray_app.py``    the same app as a Ray Serve deployment (``--replicas``)
"""
