"""Small helpers shared by the tests."""

from __future__ import annotations

import io
from pathlib import Path


def checkpoint_form(model, *, graph: bool = False, labels: bytes | None = None, **fields) -> dict:
    """A multipart form for the test client: a checkpoint push of a tfmodels.BuiltModel."""
    form = {
        "meta": (io.BytesIO(model.meta.read_bytes()), model.meta.name),
        "index": (io.BytesIO(model.index.read_bytes()), model.index.name),
        "data": [(io.BytesIO(p.read_bytes()), p.name) for p in model.data],
    }
    if graph:
        form["graph"] = (io.BytesIO(model.inference_graph.read_bytes()), model.inference_graph.name)
    if labels is not None:
        form["labels"] = (io.BytesIO(labels), "labels.txt")
    form.update(fields)
    return form


def frozen_form(path: Path, **fields) -> dict:
    return {"frozen": (io.BytesIO(path.read_bytes()), path.name), **fields}


def push(client, name: str, form: dict, headers: dict | None = None):
    return client.post(f"/api/v1/models/{name}/versions", data=form, content_type="multipart/form-data",
                       headers=headers)


def blob_files(home: Path) -> list[Path]:
    """Every stored blob and every leftover temporary upload under a registry home."""
    root = home / "blobs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def csrf_token(client) -> str:
    """The CSRF token of the test client's session, as a page hands it to forms and scripts."""
    import re

    body = client.get("/sign-in").get_data(as_text=True)
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', body).group(1)


def issue_tokens(db) -> dict[str, str]:
    """A token of each scope, plus one that was revoked, created through the service."""
    from registry import auth
    from registry.auth.audit import Actor

    actor = Actor("tests")
    tokens = {scope: auth.create_token(db, f"{scope}-token", scope, actor)[1] for scope in auth.SCOPES}
    tokens["revoked"] = auth.create_token(db, "revoked-token", "admin", actor)[1]
    auth.revoke_token(db, "revoked-token", actor)
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
