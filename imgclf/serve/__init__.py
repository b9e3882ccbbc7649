"""``imgclf serve``: a model behind a REST API (FastAPI + uvicorn) with dynamic batching, limits and a web page.

``app.py`` builds the application, ``uploads.py`` turns request bodies into
decoded images (or a 4xx), ``batcher.py`` groups concurrent requests into
one model call, ``metrics.py`` keeps the Prometheus counters, ``loaded.py``
is the version answering and ``reload.py`` switches it when a model folder's
pointer moves, ``server.py`` runs it; ``static/index.html`` is the page at ``/``.
"""
