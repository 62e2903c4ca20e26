"""SQLAlchemy 2 models.  ORM rows stay inside the services; the rest of the
code works with the plain entities in ``registry.entities``.

Over 400 lines on purpose: every table is declared here, so the schema reads in one place and the
migration tests compare it whole against what Alembic builds."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC datetimes on every engine (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: sa.JSON, list[Any]: sa.JSON}


class RegisteredModel(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    # Highest version number ever handed out; bumped with an UPDATE inside the
    # push transaction so concurrent pushes serialise on this row.
    last_version: Mapped[int] = mapped_column(default=0)
    # How many versions exist; kept with the counter so pages never count rows.
    version_count: Mapped[int] = mapped_column(default=0, server_default="0")
    # Set when the model is deleted: the row stays as a tombstone so that pushing
    # the same name again goes on from last_version and never reuses a number.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    # Ops an admin allowed for this model's graphs despite the converter's scan (registry.safety).
    allowed_ops: Mapped[list[Any] | None] = mapped_column(default=None)
    # Versions a TensorFlow Serving export serves: a list, "all" (every ready version), or None:
    # every aliased version and the newest ready one.
    served_versions: Mapped[Any] = mapped_column(sa.JSON, default=None, nullable=True)
    # Automatic comparison of each newly ready version: {"sets": [names], "reference": alias}; None: off.
    auto_compare: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    versions: Mapped[list["ModelVersion"]] = relationship(back_populates="model", lazy="raise")
    aliases: Mapped[list["Alias"]] = relationship(back_populates="model", lazy="raise")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
        sa.Index("ix_model_versions_model_status_version", "model_id", "status", "version"),
        sa.Index("ix_model_versions_created_at", "created_at"),
        sa.Index("ix_model_versions_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    status_message: Mapped[str] = mapped_column(sa.Text, default="")
    source: Mapped[str] = mapped_column(sa.String(32))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    requested_output_nodes: Mapped[list[Any] | None] = mapped_column(default=None)
    requested_input_nodes: Mapped[list[Any] | None] = mapped_column(default=None)
    output_nodes: Mapped[list[Any] | None] = mapped_column(default=None)
    output_nodes_detected: Mapped[bool | None] = mapped_column(default=None)
    input_nodes: Mapped[list[Any] | None] = mapped_column(default=None)
    # The signature a pushed SavedModel's input_nodes/output_nodes describe (None: serving_default).
    signature: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    # Signatures declared with a push (registry.signatures.validate_declared), frozen with the default one.
    requested_signatures: Mapped[list[Any] | None] = mapped_column(default=None)
    # Every signature of the frozen graph, by name (registry.signatures).
    signatures: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # The output :label and :compare rank classes by (a node of output_nodes); None: the first.
    prediction_output: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    # The TF Serving SavedModel, built by a follow-on job once the version is ready: pending, ready or failed
    # (None: a version converted before the state was kept; its SavedModel, if any, is among its files).
    saved_model_state: Mapped[str | None] = mapped_column(sa.String(16), default=None)
    saved_model_message: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    frozen_sha256: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    frozen_size: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    tf_version: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    conversion: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # label_image.py settings given at push or edited later; unset keys use the defaults.
    preprocessing: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    # Lineage: the checkpoint's global_step (read from it when it has one) and what the push said.
    global_step: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    source_commit: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    run_url: Mapped[str | None] = mapped_column(sa.Text, default=None)
    dataset: Mapped[str | None] = mapped_column(sa.String(255), default=None)

    model: Mapped[RegisteredModel] = relationship(back_populates="versions", lazy="raise")
    files: Mapped[list["VersionFile"]] = relationship(
        back_populates="version", lazy="raise", order_by="VersionFile.id"
    )


class VersionFile(Base):
    """One uploaded file of a version, by role (meta, index, data, graph, frozen, labels)."""

    __tablename__ = "version_files"
    __table_args__ = (sa.Index("ix_version_files_sha256", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(sa.String(16))
    filename: Mapped[str] = mapped_column(sa.String(255))
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size: Mapped[int] = mapped_column(sa.BigInteger)

    version: Mapped[ModelVersion] = relationship(back_populates="files", lazy="raise")


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (sa.UniqueConstraint("model_id", "name", name="uq_aliases_model_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(64))
    version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    # The version that gets a copy of the traffic served through this alias (shadow traffic); None: off.
    shadow_version_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="SET NULL"), default=None)

    model: Mapped[RegisteredModel] = relationship(back_populates="aliases", lazy="raise")
    version: Mapped[ModelVersion] = relationship(lazy="raise", foreign_keys=[version_id])


class Agreement(Base):
    """What the last comparison of two versions on the same images found."""

    __tablename__ = "agreements"
    __table_args__ = (sa.UniqueConstraint("model_id", "newer", "older", name="uq_agreements_pair"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    newer: Mapped[int]
    older: Mapped[int]
    top1_agreement: Mapped[float] = mapped_column(sa.Float)
    mean_abs_score_diff: Mapped[float | None] = mapped_column(sa.Float, default=None)
    images: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Job(Base):
    """A unit of background work (today: converting one version).

    Jobs live here rather than in memory so they survive restarts; a worker
    holds a lease it must renew, and an expired lease makes the job claimable
    again.
    """

    __tablename__ = "jobs"
    __table_args__ = (sa.Index("ix_jobs_status_run_after", "status", "run_after"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(sa.String(16), default="queued")
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    # A comparison job runs this report (version_id then names the candidate version).
    report_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("comparison_reports.id", ondelete="CASCADE"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EvalSet(Base):
    """One revision of a model's named evaluation set: an immutable, content-addressed blob.  Each
    upload of a name is the next revision; a deleted one stays as a tombstone (``deleted_at``) so the
    reports that name it stay readable."""

    __tablename__ = "eval_sets"
    __table_args__ = (sa.UniqueConstraint("model_id", "name", "revision", name="uq_eval_sets_revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(64))
    revision: Mapped[int]
    format: Mapped[str] = mapped_column(sa.String(16))  # images, jsonl, npz, tfrecord
    filename: Mapped[str] = mapped_column(sa.String(255), default="")
    sha256: Mapped[str] = mapped_column(sa.String(64), index=True)
    size: Mapped[int] = mapped_column(sa.BigInteger)
    count: Mapped[int]  # inputs in the set
    # What the set holds, read at upload: inputs (name, dtype, shape), expected values, label feature, ...
    summary: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class ComparisonReport(Base):
    """A comparison of versions on the same inputs, kept with a permalink: which versions (and their
    sha256), which set revision and signature, its progress while it runs as a job, and the report."""

    __tablename__ = "comparison_reports"
    __table_args__ = (sa.Index("ix_comparison_reports_model_created", "model_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(sa.String(16))  # queued, running, done, failed
    trigger: Mapped[str] = mapped_column(sa.String(16), default="manual")  # manual, auto
    eval_set_id: Mapped[int | None] = mapped_column(sa.ForeignKey("eval_sets.id", ondelete="SET NULL"),
                                                    default=None)
    eval_set_name: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    eval_set_revision: Mapped[int | None] = mapped_column(default=None)
    signature: Mapped[str] = mapped_column(sa.String(128), default="")
    versions: Mapped[list[Any]]  # [{"version": N, "sha256": ..., "ref": ...}]
    settings: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # top_k, tolerance, ...
    done: Mapped[int] = mapped_column(default=0)
    total: Mapped[int] = mapped_column(default=0)
    report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class VersionMetric(Base):
    """A named numeric metric of a version (``accuracy@SET``), recorded by a comparison or the API."""

    __tablename__ = "version_metrics"
    __table_args__ = (sa.Index("ix_version_metrics_version_name", "version_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(128))
    value: Mapped[float] = mapped_column(sa.Float)
    eval_set: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    step: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    source: Mapped[str] = mapped_column(sa.String(32), default="api")  # api, compare
    report_id: Mapped[int | None] = mapped_column(sa.ForeignKey("comparison_reports.id", ondelete="SET NULL"),
                                                  default=None)
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShadowWindow(Base):
    """Primary/shadow agreement and output differences of one alias, summed over one time window."""

    __tablename__ = "shadow_windows"
    __table_args__ = (sa.UniqueConstraint("model_id", "alias", "primary_version", "shadow_version", "window_start",
                                          name="uq_shadow_windows_window"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(sa.String(64))
    primary_version: Mapped[int]
    shadow_version: Mapped[int]
    window_start: Mapped[datetime]
    requests: Mapped[int] = mapped_column(default=0)  # answered by the primary while shadowing
    compared: Mapped[int] = mapped_column(default=0)  # inputs both answered
    agreed: Mapped[int] = mapped_column(default=0)  # of those, where they agree (top-1, or within tolerance)
    dropped: Mapped[int] = mapped_column(default=0)  # copies dropped: the shadow queue was full
    errors: Mapped[int] = mapped_column(default=0)  # the shadow failed
    values: Mapped[int] = mapped_column(sa.BigInteger, default=0)  # output values compared
    sum_abs_diff: Mapped[float] = mapped_column(sa.Float, default=0.0)
    max_abs_diff: Mapped[float] = mapped_column(sa.Float, default=0.0)


class ShadowSample(Base):
    """An input on which primary and shadow disagreed, kept only when a setting asks (bounded)."""

    __tablename__ = "shadow_samples"
    __table_args__ = (sa.Index("ix_shadow_samples_model_alias", "model_id", "alias", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(sa.String(64))
    primary_version: Mapped[int]
    shadow_version: Mapped[int]
    inputs: Mapped[Any] = mapped_column(sa.JSON)
    primary_outputs: Mapped[Any] = mapped_column(sa.JSON, nullable=True, default=None)
    shadow_outputs: Mapped[Any] = mapped_column(sa.JSON, nullable=True, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """An API token.  Only the sha256 of the token is kept; ``prefix`` is the non-secret
    part of the token by which it is looked up.  Tokens are revoked, never deleted, so
    the audit log keeps naming who did what."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), index=True)
    prefix: Mapped[str] = mapped_column(sa.String(16), unique=True)
    token_sha256: Mapped[str] = mapped_column(sa.String(64))
    scope: Mapped[str] = mapped_column(sa.String(8))
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEvent(Base):
    """One write: who (token), what (action, target, details), when, from where."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(sa.String(128))
    token_id: Mapped[int | None] = mapped_column(default=None)
    action: Mapped[str] = mapped_column(sa.String(64), index=True)
    target: Mapped[str] = mapped_column(sa.String(255), default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    remote_addr: Mapped[str | None] = mapped_column(sa.String(64), default=None)


class WebSession(Base):
    """A browser signed in with a token.  The session cookie carries a random id and only its sha256
    is kept here; signing out deletes the row, so a copied cookie stops working there and then."""

    __tablename__ = "web_sessions"

    id_sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(sa.ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- issue 17: tags, alias history and rules, webhooks ---------------------------------------------

TAG_VALUE_INDEXED = 128  # characters of a tag value in the (key, value) index


class ModelTag(Base):
    __tablename__ = "model_tags"
    __table_args__ = (sa.Index("ix_model_tags_key_value", "key", sa.func.substr(sa.text("value"), 1, 128)),)

    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(5000))
    updated_by: Mapped[str] = mapped_column(sa.String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class VersionTag(Base):
    __tablename__ = "version_tags"
    __table_args__ = (sa.Index("ix_version_tags_key_value", "key", sa.func.substr(sa.text("value"), 1, 128)),)

    version_id: Mapped[int] = mapped_column(sa.ForeignKey("model_versions.id", ondelete="CASCADE"),
                                            primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(5000))
    updated_by: Mapped[str] = mapped_column(sa.String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class AliasMove(Base):
    """One move of an alias: from which version to which (None: created / removed), who, when, why."""

    __tablename__ = "alias_history"
    __table_args__ = (sa.Index("ix_alias_history_model_alias", "model_id", "alias", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(sa.String(64))
    from_version: Mapped[int | None] = mapped_column(default=None)
    to_version: Mapped[int | None] = mapped_column(default=None)
    actor: Mapped[str] = mapped_column(sa.String(128), default="")
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    forced: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasRule(Base):
    """A model's rule for one alias: protected (moves need the promote scope and a reason) and its gate."""

    __tablename__ = "alias_rules"
    __table_args__ = (sa.UniqueConstraint("model_id", "alias", name="uq_alias_rules_model_alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(sa.ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(sa.String(64))
    protected: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    gate: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    updated_by: Mapped[str] = mapped_column(sa.String(128), default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(sa.Text)
    events: Mapped[list[Any]]
    model: Mapped[str | None] = mapped_column(sa.String(128), default=None)  # None: every model
    secret: Mapped[str] = mapped_column(sa.String(128))  # HMAC-SHA256 key of the signatures
    description: Mapped[str] = mapped_column(sa.Text, default="")
    active: Mapped[bool] = mapped_column(default=True, server_default=sa.true())
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookEvent(Base):
    """The outbox: an event written in the same transaction as the change it reports."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event: Mapped[str] = mapped_column(sa.String(32))
    model: Mapped[str] = mapped_column(sa.String(128))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event to one hook: sent after commit by the workers, retried with backoff, redeliverable."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
                      sa.Index("ix_webhook_deliveries_hook", "webhook_id", "id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(sa.ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(sa.ForeignKey("webhook_events.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(sa.String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
