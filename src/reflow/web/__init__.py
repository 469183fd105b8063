"""The web server: the REST API (``/api/v1``) and the UI, over the services.

``reflow.web.app.create_app(project, ...)`` builds the FastAPI application; ``reflow web``
and ``reflow up`` serve it with Uvicorn.
"""
