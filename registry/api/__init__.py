"""JSON API under /api/v1."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from registry.api import auth_views, views  # noqa: E402  (registers the routes)

__all__ = ["bp", "auth_views", "views"]
