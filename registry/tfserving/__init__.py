"""The TensorFlow Serving export: the registry as the source of truth a stock TF Serving reads.

* ``plan.py``: which versions of which models to serve, and ``models.config`` (TF Serving's protos);
* ``targets.py``: the model base path the export writes, a local folder or an S3 prefix;
* ``sync.py``: make the base path hold exactly the served versions, now or in the background.

Not to be confused with ``registry.serving``, the label service that speaks TF
Serving's REST and gRPC APIs itself.  No TensorFlow here: the web app imports it.
"""

from registry.tfserving.plan import ModelPlan, config_labels, models_config, plan
from registry.tfserving.sync import ExportSyncer, SyncReport, WouldEmptyConfig, config_for, sync
from registry.tfserving.targets import (
    CONFIG_NAME,
    ExportTarget,
    LocalTarget,
    S3Target,
    has_version,
    open_target,
    reload_folder,
)

__all__ = [
    "CONFIG_NAME", "ExportSyncer", "ExportTarget", "LocalTarget", "ModelPlan", "S3Target", "SyncReport",
    "WouldEmptyConfig",
    "config_for", "config_labels", "has_version", "models_config", "open_target", "plan", "reload_folder", "sync",
]
