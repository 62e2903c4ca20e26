"""The gRPC API (TF Serving's) honours the same tokens as REST: ``authorization: Bearer``
metadata, UNAUTHENTICATED without a valid token where reads are not public."""

from __future__ import annotations

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from registry import auth
from registry.auth.audit import Actor
from registry.serving.grpc_server import start_grpc_server
from tests.conftest import make_settings, start_live_server
from tests.helpers import issue_tokens

pytestmark = pytest.mark.slow


def status_request(name: str = "nope") -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return request


@pytest.fixture
def stub(tmp_path):
    """A ModelService stub on a registry that enforces tokens for reads, and its tokens."""
    server, stop = start_live_server(make_settings(tmp_path / "h", embedded=False, public_read=False,
                                                   serving_export_root=str(tmp_path / "models")), workers=False)
    grpc_server, port = start_grpc_server(server.registry, port=0)
    tokens = issue_tokens(server.registry.db)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel), tokens, server
    grpc_server.stop(0)
    stop()


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


@pytest.mark.parametrize("metadata, says", [
    ((), "needs a token with read scope"),
    ((("authorization", "Basic dXNlcjpwYXNz"),), "Bearer"),
    ((("authorization", "Bearer rgt_0000"),), "malformed"),
])
def test_grpc_without_a_valid_token_is_unauthenticated(stub, metadata, says):
    models, _, _ = stub
    code, details = code_of(lambda: models.GetModelStatus(status_request(), metadata=metadata))
    assert code == grpc.StatusCode.UNAUTHENTICATED and says in details


def test_grpc_with_a_revoked_token_is_unauthenticated(stub):
    models, tokens, _ = stub
    code, details = code_of(lambda: models.GetModelStatus(
        status_request(), metadata=(("authorization", f"Bearer {tokens['revoked']}"),)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details


@pytest.mark.parametrize("scope", ["read", "write", "admin"])
def test_grpc_with_a_token_reaches_the_service(stub, scope):
    models, tokens, _ = stub
    code, details = code_of(lambda: models.GetModelStatus(
        status_request(), metadata=(("authorization", f"Bearer {tokens[scope]}"),)))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in details  # past the check, to the catalog


def test_grpc_is_open_where_reads_are_public(tmp_path):
    server, stop = start_live_server(make_settings(tmp_path / "h", embedded=False, public_read=True), workers=False)
    grpc_server, port = start_grpc_server(server.registry, port=0)
    auth.create_token(server.registry.db, "someone", "admin", Actor("tests"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            code, _ = code_of(lambda: models.GetModelStatus(status_request()))
            assert code == grpc.StatusCode.NOT_FOUND
    finally:
        grpc_server.stop(0)
        stop()


def reload_request(base_path: str):
    from tensorflow_serving.apis import model_management_pb2

    request = model_management_pb2.ReloadConfigRequest()
    model = request.config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = "cnn", base_path, "tensorflow"
    return request


def test_grpc_config_reload_needs_a_write_token(stub, tmp_path):
    """A reload changes what the server serves: read tokens are refused, even where reads are open."""
    models, tokens, server = stub
    request = reload_request(str(tmp_path / "models" / "cnn"))
    code, details = code_of(lambda: models.HandleReloadConfigRequest(request))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "write scope" in details
    code, details = code_of(lambda: models.HandleReloadConfigRequest(
        request, metadata=(("authorization", f"Bearer {tokens['read']}"),)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "read scope" in details
    assert server.registry.serving_config is None  # nothing was taken
    answer = models.HandleReloadConfigRequest(request, metadata=(("authorization", f"Bearer {tokens['write']}"),))
    assert answer.status.error_code == 0
    assert [m.name for m in server.registry.serving_config.model_config_list.config] == ["cnn"]
