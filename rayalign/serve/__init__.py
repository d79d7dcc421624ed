"""Serving on Ray Serve: the OpenAI-compatible HTTP API (``server.py``, its request and response shapes
in ``protocol.py``) over one generation engine per replica, and deploying it (``deploy.py``)."""
