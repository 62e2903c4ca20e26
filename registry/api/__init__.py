"""JSON API under /api/v1: handlers in ``views`` and ``auth_views``, each declared with its request and
answer models (``schemas``) by ``spec.operation``, which also builds the OpenAPI document."""

from flask import Blueprint, Flask

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from registry.api import auth_views, views  # noqa: E402  (registers the routes)
from registry.api import shadow_views  # noqa: E402,F401  (registers the shadow traffic routes)
from registry.api import comparison_views  # noqa: E402,F401  (registers the comparison report routes)
from registry.api import search_views  # noqa: E402,F401  (registers the tag and search routes)
from registry.api import alias_views  # noqa: E402,F401  (alias history, rollback, protected aliases)
from registry.api import eval_views  # noqa: E402,F401  (registers the evaluation set routes)
from registry.api import webhook_views  # noqa: E402,F401  (webhooks, their delivery log, redelivery)
from registry.api.spec import openapi_document  # noqa: E402


def api_document() -> dict:
    """The OpenAPI document of /api/v1 without a configured registry: what schemathesis and the
    benchmarks read."""
    app = Flask("registry")
    app.register_blueprint(bp)
    return openapi_document(app)


__all__ = ["api_document", "auth_views", "bp", "views"]
