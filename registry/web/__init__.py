"""Server-rendered pages: browse models and versions, push, pull, compare.

Every asset is served by the app itself (no external requests), and the pages
use the same services as the JSON API; the little JavaScript there is talks to
that API (upload progress, following a conversion, comparing versions).
"""

from flask import Blueprint

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

from registry.web import views  # noqa: E402  (registers the routes)

__all__ = ["bp", "views"]
