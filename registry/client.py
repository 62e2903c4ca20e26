"""HTTP client for the registry's API, used by the CLI.

Uploads stream from disk as a multipart body of known length and downloads
stream to a temporary file that is renamed only once its sha256 checks out, so
neither holds a checkpoint in memory and an interrupted pull leaves no file.

Over 400 lines because it is the whole API a CLI user reaches, one small method per call.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import requests

from registry.errors import RegistryError

CHUNK = 1024 * 1024


class ClientError(RegistryError):
    """The server answered with an error, or could not be reached."""


@dataclass
class _Part:
    field: str
    header: bytes
    path: Path | None = None
    value: bytes = b""

    @property
    def length(self) -> int:
        return len(self.header) + (self.path.stat().st_size if self.path else len(self.value)) + 2


class MultipartBody:
    """A multipart/form-data body streamed from files, with its length known up front."""

    def __init__(self, fields: dict[str, str], files: list[tuple[str, Path]],
                 progress: Callable[[int], None] | None = None) -> None:
        self.boundary = uuid.uuid4().hex
        self.progress = progress
        self.parts: list[_Part] = []
        for name, value in fields.items():
            header = (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n").encode()
            self.parts.append(_Part(name, header, value=value.encode()))
        for name, path in files:
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            header = (
                f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{path.name}\"\r\nContent-Type: {ctype}\r\n\r\n"
            ).encode()
            self.parts.append(_Part(name, header, path=path))
        self.closing = f"--{self.boundary}--\r\n".encode()

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def file_bytes(self) -> int:
        return sum(p.path.stat().st_size for p in self.parts if p.path)

    def __len__(self) -> int:
        return sum(p.length for p in self.parts) + len(self.closing)

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            yield part.header
            if part.path is None:
                yield part.value
            else:
                with open(part.path, "rb") as f:
                    while chunk := f.read(CHUNK):
                        if self.progress:
                            self.progress(len(chunk))
                        yield chunk
            yield b"\r\n"
        yield self.closing


def checkpoint_files(prefix: Path) -> dict[str, list[Path]]:
    """The ``.meta``, ``.index`` and ``.data-*`` files written for a checkpoint prefix."""
    prefix = Path(prefix)
    found: dict[str, list[Path]] = {}
    meta = Path(f"{prefix}.meta")
    index = Path(f"{prefix}.index")
    data = sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))
    if meta.is_file():
        found["meta"] = [meta]
    if index.is_file():
        found["index"] = [index]
    if data:
        found["data"] = data
    return found


class RegistryClient:
    """The registry's API over HTTP; ``token`` (an API token) is sent as ``Authorization: Bearer``."""

    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token.strip()}"

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, f"{self.url}{path}", timeout=kwargs.pop("timeout", self.timeout),
                                            **kwargs)
        except requests.ConnectionError as exc:
            raise ClientError(f"cannot reach the registry at {self.url}: is `registry serve` running? "
                              "(set --url or REGISTRY_URL)", code="unreachable", status=503) from exc
        except requests.Timeout as exc:
            raise ClientError(f"the registry at {self.url} did not answer within {self.timeout:g} s: try again",
                              code="timeout", status=504) from exc
        except requests.RequestException as exc:  # a URL it cannot use (no scheme, no host) and the like
            raise ClientError(f"cannot ask the registry at {self.url}: {exc} (check --url or REGISTRY_URL)",
                              code="invalid_url", status=400) from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise ClientError(f"{method} {path} answered {response.status_code}: {response.text[:200]}",
                                  status=response.status_code) from None
            if isinstance(error, str):  # TF Serving's shape, used under /v1
                raise ClientError(error, code="error", status=response.status_code)
            raise ClientError(error["message"], code=error["code"], status=response.status_code)
        return response

    def list_models(self, query: str | None = None) -> Iterator[dict]:
        return self._pages("/api/v1/models", "models", {"q": query} if query else {}, None)

    def list_versions(self, name: str, limit: int | None = None) -> Iterator[dict]:
        return self._pages(f"/api/v1/models/{name}/versions", "versions", {}, limit)
    def set_tags(self, name: str, ref: str | None, changes: dict[str, str | None]) -> dict[str, str]:
        """Set or delete (None) tags of model ``name``, or of its version ``ref``; the tags after the write."""
        path = f"/api/v1/models/{name}" + (f"/versions/{ref}" if ref else "") + "/tags"
        return self._request("PATCH", path, json=changes).json()["tags"]

    def _pages(self, path: str, key: str, params: dict, limit: int | None) -> Iterator[dict]:
        """The items under ``key`` of every page of a listing, following next_page_token (at most
        ``limit``, asking for no more than that per page)."""
        token, seen = None, 0
        while limit is None or seen < limit:
            asked = {**params, **({"page_token": token} if token else {}),
                     **({"page_size": max(1, min(limit - seen, 1000))} if limit is not None else {})}
            page = self._request("GET", path, params=asked).json()
            for item in page[key][:None if limit is None else limit - seen]:
                seen += 1
                yield item
            token = page["next_page_token"]
            if not token:
                return

    def search_versions(self, filter_text: str = "", order_by: str | None = None,
                        limit: int | None = None) -> Iterator[dict]:
        """Versions of every model matching ``filter_text`` (the registry's filter grammar)."""
        params = {k: v for k, v in {"filter": filter_text, "order_by": order_by}.items() if v}
        return self._pages("/api/v1/versions", "versions", params, limit)

    def search_models(self, filter_text: str = "", order_by: str | None = None,
                      limit: int | None = None) -> Iterator[dict]:
        params = {k: v for k, v in {"filter": filter_text, "order_by": order_by}.items() if v}
        return self._pages("/api/v1/models", "models", params, limit)

    def get_auto_compare(self, name: str) -> dict:
        return self._request("GET", f"/api/v1/models/{name}/auto-compare").json()

    def set_auto_compare(self, name: str, sets: list[str] | None, reference: str | None) -> dict:
        return self._request("PUT", f"/api/v1/models/{name}/auto-compare",
                             json={"sets": sets, "reference": reference}).json()

    def list_tokens(self) -> list[dict]:
        """Every token, revoked ones too (admin token; never the tokens themselves)."""
        return self._request("GET", "/api/v1/tokens").json()["tokens"]

    def create_token(self, name: str, scope: str) -> dict:
        """A new token (admin token): the answer's ``token`` is the only place it is ever shown."""
        return self._request("POST", "/api/v1/tokens", json={"name": name, "scope": scope}).json()

    def revoke_token(self, name_or_id: str) -> dict:
        return self._request("DELETE", f"/api/v1/tokens/{quote(name_or_id, safe='')}").json()

    def add_webhook(self, url: str, events: list[str], model: str | None = None, secret: str | None = None,
                    description: str = "") -> dict:
        """A new webhook (admin token): the answer's ``secret`` is the only place it is ever shown."""
        body = {"url": url, "events": events, **({"model": model} if model else {}),
                **({"secret": secret} if secret else {}), **({"description": description} if description else {})}
        return self._request("POST", "/api/v1/webhooks", json=body).json()

    def list_webhooks(self) -> list[dict]:
        return self._request("GET", "/api/v1/webhooks").json()["webhooks"]

    def delete_webhook(self, hook_id: int) -> dict:
        return self._request("DELETE", f"/api/v1/webhooks/{int(hook_id)}").json()

    def webhook_deliveries(self, hook_id: int, limit: int | None = None) -> Iterator[dict]:
        """A webhook's deliveries, newest first."""
        return self._pages(f"/api/v1/webhooks/{int(hook_id)}/deliveries", "deliveries", {}, limit)

    def redeliver_webhook(self, hook_id: int, delivery_id: int) -> dict:
        return self._request("POST", f"/api/v1/webhooks/{int(hook_id)}/deliveries/{int(delivery_id)}/redeliver"
                             ).json()

    def get_model(self, name: str) -> dict:
        return self._request("GET", f"/api/v1/models/{name}").json()

    def get_version(self, name: str, ref: str | int) -> dict:
        return self._request("GET", f"/api/v1/models/{name}/versions/{ref}").json()

    def get_labels(self, name: str, version: int) -> str:
        """A version's labels file as text (a few KB: one label per line)."""
        return self._request("GET", f"/api/v1/models/{name}/versions/{version}/labels.txt").text

    def pull_labels(self, name: str, record: dict, dest: Path) -> str:
        """Download a version's labels file to ``dest``, its sha256 checked before it appears there."""
        labels = next((f for f in record.get("files", []) if f["role"] == "labels"), None)
        response = self._request("GET", f"/api/v1/models/{name}/versions/{record['version']}/labels.txt",
                                 stream=True)
        return _save_verified(response, Path(dest), labels["sha256"] if labels else None)

    def predict(self, name: str, ref: str, body: bytes) -> dict:
        """TF Serving's REST ``:predict`` on a version (number), an alias or the newest (``latest``)."""
        return self._request("POST", f"{_serving_path(name, ref)}:predict", data=body,
                             headers={"Content-Type": "application/json"}, timeout=None).json()

    def list_audit(self, action: str | None = None, limit: int | None = None) -> Iterator[dict]:
        """Audit events, newest first (admin token)."""
        return self._pages("/api/v1/audit", "events", {"action": action} if action else {}, limit)
    def push(self, name: str, files: list[tuple[str, Path]], fields: dict[str, str],
             progress: Callable[[int], None] | None = None) -> dict:
        body = MultipartBody(fields, files, progress)
        return self._request(
            "POST", f"/api/v1/models/{name}/versions", data=body,
            headers={"Content-Type": body.content_type, "Content-Length": str(len(body))}, timeout=None,
        ).json()

    def wait(self, name: str, version: int, timeout: float = 3600.0, poll: float = 0.5) -> dict:
        """The version once ready or failed; asked often at first (most conversions take seconds), then
        every ``poll`` seconds."""
        deadline = time.monotonic() + timeout
        interval = 0.05
        while True:
            record = self.get_version(name, version)
            if record["status"] in ("ready", "failed"):
                return record
            if time.monotonic() > deadline:
                raise ClientError(f"version {version} of {name} is still {record['status']} after {timeout:g} s",
                                  code="timeout", status=504)
            time.sleep(interval)
            interval = min(poll, interval * 1.5)

    def pull(self, name: str, ref: str, dest: Path, progress: Callable[[int], None] | None = None,
             on_start: Callable[[int], None] | None = None) -> dict:
        """Download the frozen graph to ``dest``; verify its sha256 before it appears there."""
        record = self.get_version(name, ref)
        response = self._request("GET", f"/api/v1/models/{name}/versions/{record['version']}/frozen.pb", stream=True)
        expected = record["frozen"]["sha256"]  # a presigned redirect's ETag is the store's, not ours
        if on_start:
            on_start(int(response.headers.get("Content-Length", 0)))
        _save_verified(response, Path(dest), expected, progress)
        return record

    def pull_saved_model(self, name: str, record: dict, dest: Path) -> str:
        """Download a version's SavedModel as it is stored (a tar; a .tar.gz for versions built before);
        its sha256 is checked before it appears at ``dest``."""
        saved = next((f for f in record.get("files", []) if f["role"] == "saved_model"), None)
        suffix = ".tar.gz" if saved and saved["filename"].endswith(".gz") else ".tar"
        response = self._request("GET", f"/api/v1/models/{name}/versions/{record['version']}/saved_model{suffix}",
                                 stream=True)
        expected = saved["sha256"] if saved else response.headers.get("X-Content-SHA256")
        return _save_verified(response, Path(dest), expected)

    def update_model(self, name: str, description: str) -> dict:
        return self._request("PATCH", f"/api/v1/models/{name}", json={"description": description}).json()

    def update_version(self, name: str, ref: str | int, preprocessing: dict | None = None,
                       description: str | None = None) -> dict:
        """Edit a version's preprocessing settings (those given; the others keep their value) and/or
        description."""
        body: dict = {"preprocessing": preprocessing} if preprocessing else {}
        if description is not None:
            body["description"] = description
        return self._request("PATCH", f"/api/v1/models/{name}/versions/{ref}", json=body).json()

    def set_prediction_output(self, name: str, ref: str | int, node: str, reason: str = "") -> dict:
        return self._request("PUT", f"/api/v1/models/{name}/versions/{ref}/prediction-output",
                             json={"prediction_output": node, "reason": reason}).json()

    def set_served_versions(self, name: str, versions: list[int] | str | None) -> dict:
        return self._request("PUT", f"/api/v1/models/{name}/serving", json={"versions": versions}).json()

    def label(self, name: str, ref: str, image: Path, top_k: int = 5) -> dict:
        path = f"/v1/models/{name}" + (f"/versions/{ref}" if ref.isdigit() else f"/labels/{ref}" if ref != "latest" else "")
        ctype = mimetypes.guess_type(image.name)[0] or ""
        if not ctype.startswith("image/"):  # the server sniffs what it is (notes.txt: not an image)
            ctype = "application/octet-stream"
        with open(image, "rb") as body:
            return self._request("POST", f"{path}:label", params={"top_k": top_k}, data=body,
                                 headers={"Content-Type": ctype}).json()

    def compare(self, name: str, images: list[Path], versions: list[str] | None = None,
                expected: list[str] | None = None, top_k: int = 5) -> dict:
        fields: list[tuple[str, object]] = [("top_k", (None, str(top_k)))]
        if versions:
            fields.append(("versions", (None, ",".join(versions))))
        if expected:
            fields.append(("expected", (None, "\n".join(expected))))
        handles = [open(p, "rb") for p in images]
        try:
            files = fields + [("image", (p.name, h)) for p, h in zip(images, handles)]
            return self._request("POST", f"/v1/models/{name}:compare", files=files, timeout=None).json()
        finally:
            for h in handles:
                h.close()

    def compare_json(self, name: str, body: dict) -> dict:
        """:compare with a JSON body (an eval_set, or instances): the report (200), or where it will be
        (202: ``{"report", "url", "status"}``)."""
        return self._request("POST", f"/v1/models/{name}:compare", json=body, timeout=None).json()

    def get_comparison(self, name: str, report_id: int) -> dict:
        return self._request("GET", f"/api/v1/models/{name}/comparisons/{report_id}").json()

    def list_comparisons(self, name: str, limit: int | None = None) -> list[dict]:
        """A model's comparison reports, newest first."""
        params = {"page_size": max(1, min(limit, 1000))} if limit else {}
        return self._request("GET", f"/api/v1/models/{name}/comparisons", params=params).json()["comparisons"]

    def set_alias(self, name: str, alias: str, version: int, reason: str = "", force: bool = False) -> dict:
        body = {"version": version, **({"reason": reason} if reason else {}), **({"force": True} if force else {})}
        return self._request("PUT", f"/api/v1/models/{name}/aliases/{alias}", json=body).json()

    def alias_history(self, name: str, alias: str, limit: int | None = None) -> Iterator[dict]:
        return self._pages(f"/api/v1/models/{name}/aliases/{alias}/history", "moves", {}, limit)

    def get_alias(self, name: str, alias: str, at: str | None = None) -> dict:
        return self._request("GET", f"/api/v1/models/{name}/aliases/{alias}",
                             params={"at": at} if at else None).json()

    def rollback(self, name: str, alias: str, reason: str = "", force: bool = False) -> dict:
        return self._request("POST", f"/api/v1/models/{name}/aliases/{alias}/rollback",
                             json={"reason": reason, "force": force}).json()

    def alias_rules(self, name: str) -> list[dict]:
        return self._request("GET", f"/api/v1/models/{name}/alias-rules").json()

    def set_alias_rule(self, name: str, alias: str, protected: bool, gate: dict | None) -> dict:
        return self._request("PUT", f"/api/v1/models/{name}/aliases/{alias}/rule",
                             json={"protected": protected, "gate": gate}).json()

    def list_metrics(self, name: str, ref: str) -> list[dict]:
        return self._request("GET", f"/api/v1/models/{name}/versions/{ref}/metrics").json()["metrics"]

    def record_metrics(self, name: str, ref: str, metrics: dict[str, float], eval_set: str | None = None,
                       step: int | None = None) -> list[dict]:
        body = {"metrics": metrics, **({"eval_set": eval_set} if eval_set else {}),
                **({"step": step} if step is not None else {})}
        return self._request("POST", f"/api/v1/models/{name}/versions/{ref}/metrics", json=body).json()["metrics"]

    def delete_version(self, name: str, ref: str | int) -> dict:
        return self._request("DELETE", f"/api/v1/models/{name}/versions/{ref}").json()

    def delete_model(self, name: str) -> dict:
        return self._request("DELETE", f"/api/v1/models/{name}").json()

    def get_allowed_ops(self, name: str) -> dict:
        return self._request("GET", f"/api/v1/models/{name}/allowed-ops").json()

    def set_allowed_ops(self, name: str, ops: list[str], reason: str = "") -> dict:
        return self._request("PUT", f"/api/v1/models/{name}/allowed-ops", json={"ops": ops, "reason": reason}).json()

    def delete_alias(self, name: str, alias: str, reason: str = "") -> None:
        self._request("DELETE", f"/api/v1/models/{name}/aliases/{alias}", params={"reason": reason} if reason else None)

    def add_eval_set(self, name: str, eval_set: str, path: Path, label_feature: str | None = None,
                     description: str = "", progress: Callable[[int], None] | None = None) -> dict:
        """Upload ``path`` as the next revision of evaluation set ``eval_set`` of model ``name``."""
        fields = {k: v for k, v in (("label_feature", label_feature), ("description", description)) if v}
        body = MultipartBody(fields, [("file", Path(path))], progress)
        return self._request(
            "POST", f"/api/v1/models/{name}/eval-sets/{quote(eval_set, safe='')}", data=body,
            headers={"Content-Type": body.content_type, "Content-Length": str(len(body))}, timeout=None,
        ).json()

    def list_eval_sets(self, name: str) -> list[dict]:
        """Each evaluation set of ``name``: its latest revision, with ``revisions`` (how many are live)."""
        return self._request("GET", f"/api/v1/models/{name}/eval-sets").json()["eval_sets"]

    def list_eval_set_revisions(self, name: str, eval_set: str) -> list[dict]:
        """The live revisions of an evaluation set, newest first."""
        return self._request("GET", f"/api/v1/models/{name}/eval-sets/{quote(eval_set, safe='')}").json()["revisions"]

    def pull_eval_set(self, name: str, eval_set: str, revision: int | None, dest: Path) -> dict:
        """Download a revision (the latest when None) of an evaluation set to ``dest``, its sha256 checked
        before it appears there; returns the revision's record."""
        base = f"/api/v1/models/{name}/eval-sets/{quote(eval_set, safe='')}"
        records = self.list_eval_set_revisions(name, eval_set)
        record = records[0] if revision is None else next((r for r in records if r["revision"] == revision), None)
        if record is None:
            record = self._request("GET", f"{base}/{revision}").json()  # 404: says which revisions there are
        response = self._request("GET", f"{base}/{record['revision']}/download", stream=True)
        _save_verified(response, Path(dest), record["sha256"])
        return record

    def delete_eval_set(self, name: str, eval_set: str, revision: int | None = None) -> dict:
        """Delete one revision of an evaluation set, or all of them (``revision`` None)."""
        path = f"/api/v1/models/{name}/eval-sets/{quote(eval_set, safe='')}" + (f"/{revision}" if revision else "")
        return self._request("DELETE", path).json()

    def get_shadow(self, name: str, alias: str, since: str | None = None, until: str | None = None) -> dict:
        """An alias's shadow version and its agreement figures per time window (default: the last 24 hours)."""
        params = {k: v for k, v in (("since", since), ("until", until)) if v}
        return self._request("GET", f"/api/v1/models/{name}/aliases/{alias}/shadow", params=params).json()

    def set_shadow(self, name: str, alias: str, version: int) -> dict:
        return self._request("PUT", f"/api/v1/models/{name}/aliases/{alias}/shadow", json={"version": version}).json()

    def delete_shadow(self, name: str, alias: str) -> dict:
        return self._request("DELETE", f"/api/v1/models/{name}/aliases/{alias}/shadow").json()


def _serving_path(name: str, ref: str) -> str:
    """The label service's TF Serving path of NAME at REF: a number (or vN), an alias, or latest."""
    number = ref[1:] if ref[:1] in ("v", "V") and ref[1:].isdecimal() else ref
    if number.isascii() and number.isdecimal():
        return f"/v1/models/{name}/versions/{int(number)}"
    return f"/v1/models/{name}" + ("" if ref == "latest" else f"/labels/{ref}")


def _save_verified(response, dest: Path, expected: str | None,
                   progress: Callable[[int], None] | None = None) -> str:
    """Stream a download into a temporary file beside ``dest`` and rename it to
    ``dest`` only if its sha256 is ``expected`` (when known); returns the sha256."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for chunk in response.iter_content(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                if progress:
                    progress(len(chunk))
        if expected and digest.hexdigest() != expected:
            raise ClientError(f"download corrupted: sha256 {digest.hexdigest()} != {expected}; pull again",
                              code="checksum_mismatch", status=502)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest()
