"""JSON API under /api/v1: handlers in ``views`` and ``auth_views``, each declared with its request and
answer models (``schemas``) by ``spec.operation``, which also builds the OpenAPI document."""

from flask import Blueprint, Flask

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from registry.api import auth_views, views  # noqa: E402  (registers the routes)
from registry.api.spec import openapi_document  # noqa: E402


def api_document() -> dict:
    """The OpenAPI document of /api/v1 without a configured registry: what schemathesis and the
    benchmarks read."""
    app = Flask("registry")
    app.register_blueprint(bp)
    return openapi_document(app)


__all__ = ["api_document", "auth_views", "bp", "views"]
