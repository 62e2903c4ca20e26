"""Search: the filter grammar (``grammar.py``, a hand-written recursive-descent parser) and the
searches it serves as SQLAlchemy expressions (``query.py``)."""

from registry.search.grammar import FilterError, parse
from registry.search.query import compile_filter, search_models, search_versions

__all__ = ["FilterError", "compile_filter", "parse", "search_models", "search_versions"]
