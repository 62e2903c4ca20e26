"""Who may call the label service's gRPC API: the REST API's tokens, as ``authorization`` metadata.

An interceptor checks every call before its handler runs, with the same rules as
REST (``registry.auth``): read scope for the methods that read, write scope for a
config reload, and anonymous callers only where the registry's settings open that
scope.  No TensorFlow here.
"""

from __future__ import annotations

import grpc

from registry import auth
from registry.errors import RegistryError, Unauthorized

# Methods that change what the server does; every other method only reads.
WRITE_METHODS = frozenset({"/tensorflow.serving.ModelService/HandleReloadConfigRequest"})


class TokenCheck(grpc.ServerInterceptor):
    """The REST API's tokens on gRPC: ``authorization: Bearer …`` metadata; read scope for the
    methods that read, write scope for a config reload.  UNAUTHENTICATED without a valid token
    where the scope is not open to anonymous callers, PERMISSION_DENIED for a token whose scope
    is too narrow."""

    def __init__(self, registry) -> None:
        self.registry = registry

    def intercept_service(self, continuation, handler_call_details):
        header = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        try:
            granted = None
            if header is not None:
                kind, _, token = header.strip().partition(" ")
                if kind.lower() != "bearer" or not token.strip():
                    raise Unauthorized("send the token as metadata authorization: Bearer rgt_…")
                granted = auth.verify(self.registry.db, token.strip()).scope
            required = auth.WRITE if handler_call_details.method in WRITE_METHODS else auth.READ
            if not (auth.allows(granted, required)
                    or auth.anonymous_allowed(self.registry.settings, self.registry.db, required)):
                if granted is not None:
                    return _refusal(grpc.StatusCode.PERMISSION_DENIED,
                                    f"this token has {granted} scope; this needs {required}")
                raise Unauthorized(f"this needs a token with {required} scope: send metadata "
                                   "authorization: Bearer <token>")
        except Unauthorized as exc:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        except RegistryError as exc:
            return _refusal(grpc.StatusCode.UNAVAILABLE, exc.message)
        return continuation(handler_call_details)


def _refusal(code: grpc.StatusCode, message: str):
    def refuse(request, context):
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)
