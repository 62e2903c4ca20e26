"""Settings: the one place where environment variables are read.

Every setting has an environment variable and a documented default (see the
README's "Configuration" table).  The embedded default keeps everything under
one data directory, ``REGISTRY_HOME`` (``./registry-data``): a SQLite file and a
local blob folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from registry import cpus

DEFAULT_PORT = 8080
AUTH_MODES = ("auto", "on", "off")


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


class SettingError(ValueError):
    """An environment setting the registry cannot use: the message names it and what it takes."""


def _parsed(name: str, default: str, parse: Callable[[str], Any], what: str) -> Any:
    value = _env(name, default)
    try:
        return parse(value)
    except ValueError:
        raise SettingError(f"{name} must be {what}, not {value!r}") from None


def _int(name: str, default: str) -> int:
    return _parsed(name, default, int, "a whole number")


def _float(name: str, default: str) -> float:
    return _parsed(name, default, float, "a number")


def _label_cpu() -> str:
    try:
        return cpus.check_setting(_env(cpus.SETTING, "auto"))
    except ValueError as exc:
        raise SettingError(str(exc)) from None


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def host_names(*values: str) -> tuple[str, ...]:
    """Host names from comma-separated lists, lower-cased, without a trailing dot, each once."""
    names = (name.strip().lower().rstrip(".") for value in values for name in value.split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def owner_only(path: Path) -> None:
    """Take group and other permissions off ``path`` if it exists and is ours: the secret key,
    the database and REGISTRY_HOME itself, where an older version or a hand left them looser."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        try:
            os.chmod(path, st.st_mode & 0o700)
        except OSError:  # a read-only file system: nothing can be written there either
            pass


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    storage_url: str
    server_url: str
    embedded_workers: int = 1
    job_lease_seconds: float = 60.0
    job_max_attempts: int = 3
    worker_poll_seconds: float = 1.0
    convert_timeout_seconds: float = 900.0
    convert_memory_mb: int = 8192  # address space: converting 1 GiB needs 3.6 GB, its SavedModel 7.2 GB
    convert_max_output_mb: int = 3072
    convert_user: str = "nobody"  # who the converter child runs as when the registry runs as root
    convert_warm: bool = True  # keep a converter child waiting with TensorFlow imported (one per worker)
    verify_tolerance: float = 1e-4
    max_upload_bytes: int = 20 * 1024**3
    label_cache_mb: int = 2048
    max_image_pixels: int = 50_000_000
    compare_max_versions: int = 8
    compare_max_images: int = 64
    compare_sync_max: int = 256  # a comparison on more inputs runs as a job (202)
    batch_max_size: int = 16
    label_timeout_seconds: float = 30.0
    label_workers: int = 1
    label_memory_mb: int = 8192
    label_cpu: str = "auto"  # the CPU a serving process's threads run on (registry.cpus)
    predict_max_elements: int = 5_000_000
    # Shadow traffic (registry.serving.shadow): aggregation window, flush period, queue bound, the largest
    # |difference| of numeric outputs that still agrees, and how many disagreeing inputs to keep per alias.
    shadow_window_seconds: float = 60.0
    shadow_flush_seconds: float = 10.0
    shadow_queue_size: int = 1000
    shadow_tolerance: float = 1e-5
    shadow_samples: int = 0
    demo: bool = True
    s3_presign: bool = False
    # Who may do what without a token (see registry.auth.anonymous_allowed).  ``embedded``
    # is the zero-configuration default: REGISTRY_DATABASE_URL not set (SQLite + local folder).
    embedded: bool = True
    auth: str = "auto"
    public_read: bool = True
    secret_key: str | None = None
    gc_interval_seconds: float = 3600.0
    gc_grace_seconds: float = 3600.0
    rate_limit_push: str = ""
    rate_limit_label: str = ""
    ratelimit_storage: str = "memory://"
    serving_export_root: str = ""
    serving_base_path: str = ""
    serving_label_delay: float = 0.0
    max_archive_bytes: int = 8 * 1024**3
    max_archive_files: int = 10_000
    max_upload_parts: int = 256
    # Evaluation sets (registry.evaluation): the largest upload, and the most inputs one set may hold.
    eval_set_max_bytes: int = 2 * 1024**3
    eval_set_max_inputs: int = 100_000
    # Webhooks (registry.webhooks): private/loopback targets allowed (tests, a registry inside one network),
    # the timeout of one POST, the attempts of a delivery, and the exponential backoff's base and cap.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 10.0
    webhook_backoff_max_seconds: float = 3600.0
    # Host names the server answers to besides localhost and IP addresses (registry.auth.access checks the
    # Host header against DNS rebinding); "*": any.  From REGISTRY_ALLOWED_HOSTS, REGISTRY_URL's host
    # and the address the server listens on (``bound_to``).
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        home = Path(_env("REGISTRY_HOME", "./registry-data")).expanduser().resolve()
        embedded = _env("REGISTRY_DATABASE_URL", "") == ""
        auth = _env("REGISTRY_AUTH", "auto").strip().lower()
        if auth not in AUTH_MODES:
            raise SettingError(f"REGISTRY_AUTH must be one of {', '.join(AUTH_MODES)}, not {auth!r}")
        settings = cls(
            home=home,
            database_url=_env("REGISTRY_DATABASE_URL", f"sqlite:///{home / 'registry.db'}"),
            storage_url=_env("REGISTRY_STORAGE", (home / "blobs").as_uri()),
            server_url=_env("REGISTRY_URL", f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/"),
            embedded_workers=_int("REGISTRY_EMBEDDED_WORKERS", "1"),
            job_lease_seconds=_float("REGISTRY_JOB_LEASE_SECONDS", "60"),
            job_max_attempts=_int("REGISTRY_JOB_MAX_ATTEMPTS", "3"),
            worker_poll_seconds=_float("REGISTRY_WORKER_POLL_SECONDS", "1"),
            convert_timeout_seconds=_float("REGISTRY_CONVERT_TIMEOUT_SECONDS", "900"),
            convert_memory_mb=_int("REGISTRY_CONVERT_MEMORY_MB", "8192"),
            convert_max_output_mb=_int("REGISTRY_CONVERT_MAX_OUTPUT_MB", "3072"),
            convert_user=_env("REGISTRY_CONVERT_USER", "nobody"),
            convert_warm=_flag(_env("REGISTRY_CONVERT_WARM", "1")),
            verify_tolerance=_float("REGISTRY_VERIFY_TOLERANCE", "1e-4"),
            max_upload_bytes=_int("REGISTRY_MAX_UPLOAD_BYTES", str(20 * 1024**3)),
            label_cache_mb=_int("REGISTRY_LABEL_CACHE_MB", "2048"),
            max_image_pixels=_int("REGISTRY_MAX_IMAGE_PIXELS", "50000000"),
            compare_max_versions=_int("REGISTRY_COMPARE_MAX_VERSIONS", "8"),
            compare_max_images=_int("REGISTRY_COMPARE_MAX_IMAGES", "64"),
            compare_sync_max=_int("REGISTRY_COMPARE_SYNC_MAX", "256"),
            batch_max_size=_int("REGISTRY_BATCH_MAX_SIZE", "16"),
            label_timeout_seconds=_float("REGISTRY_LABEL_TIMEOUT_SECONDS", "30"),
            label_workers=_int("REGISTRY_LABEL_WORKERS", "1"),
            label_memory_mb=_int("REGISTRY_LABEL_MEMORY_MB", "8192"),
            label_cpu=_label_cpu(),
            predict_max_elements=_int("REGISTRY_PREDICT_MAX_ELEMENTS", "5000000"),
            shadow_window_seconds=_float("REGISTRY_SHADOW_WINDOW_SECONDS", "60"),
            shadow_flush_seconds=_float("REGISTRY_SHADOW_FLUSH_SECONDS", "10"),
            shadow_queue_size=_int("REGISTRY_SHADOW_QUEUE_SIZE", "1000"),
            shadow_tolerance=_float("REGISTRY_SHADOW_TOLERANCE", "1e-5"),
            shadow_samples=_int("REGISTRY_SHADOW_SAMPLES", "0"),
            demo=_env("REGISTRY_DEMO", "1").strip().lower() not in ("0", "false", "no", "off"),
            s3_presign=_env("REGISTRY_S3_PRESIGN", "0").strip().lower() in ("1", "true", "yes", "on"),
            embedded=embedded,
            auth=auth,
            public_read=_flag(_env("REGISTRY_PUBLIC_READ", "1" if embedded else "0")),
            secret_key=_env("REGISTRY_SECRET_KEY", "") or None,
            gc_interval_seconds=_float("REGISTRY_GC_INTERVAL_SECONDS", "3600"),
            gc_grace_seconds=_float("REGISTRY_GC_GRACE_SECONDS", "3600"),
            rate_limit_push=_env("REGISTRY_RATE_LIMIT_PUSH", "off"),
            rate_limit_label=_env("REGISTRY_RATE_LIMIT_LABEL", "off"),
            ratelimit_storage=_env("REGISTRY_RATELIMIT_STORAGE", "memory://"),
            serving_export_root=_env("REGISTRY_SERVING_EXPORT_ROOT", ""),
            serving_base_path=_env("REGISTRY_SERVING_BASE_PATH", ""),
            serving_label_delay=_float("REGISTRY_SERVING_LABEL_DELAY", "0"),
            max_archive_bytes=_int("REGISTRY_MAX_ARCHIVE_BYTES", str(8 * 1024**3)),
            max_archive_files=_int("REGISTRY_MAX_ARCHIVE_FILES", "10000"),
            max_upload_parts=_int("REGISTRY_MAX_UPLOAD_PARTS", "256"),
            eval_set_max_bytes=_int("REGISTRY_EVAL_SET_MAX_BYTES", str(2 * 1024**3)),
            eval_set_max_inputs=_int("REGISTRY_EVAL_SET_MAX_INPUTS", "100000"),
            webhook_allow_private=_flag(_env("REGISTRY_WEBHOOK_ALLOW_PRIVATE", "0")),
            webhook_timeout_seconds=_float("REGISTRY_WEBHOOK_TIMEOUT_SECONDS", "10"),
            webhook_max_attempts=_int("REGISTRY_WEBHOOK_MAX_ATTEMPTS", "8"),
            webhook_backoff_seconds=_float("REGISTRY_WEBHOOK_BACKOFF_SECONDS", "10"),
            webhook_backoff_max_seconds=_float("REGISTRY_WEBHOOK_BACKOFF_MAX_SECONDS", "3600"),
            allowed_hosts=host_names(_env("REGISTRY_ALLOWED_HOSTS", ""),
                                     urlsplit(_env("REGISTRY_URL", "")).hostname or ""),
        )
        return replace(settings, **overrides) if overrides else settings

    def bound_to(self, host: str) -> "Settings":
        """These settings for a server listening on ``host`` (``--host``): it answers to that name too."""
        return replace(self, allowed_hosts=host_names(*self.allowed_hosts, host))

    def ensure_home(self) -> None:
        """Create the data directory the embedded defaults live in, accessible to its owner only
        (it holds the secret key and the database; the converter child must not reach them)."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner_only(self.home)
