"""The ``registry`` command: run the server and worker, push, pull and list.

One module per group of commands, each imported only when one of its commands
runs (or ``--help`` lists them), so ``registry ls`` does not load the server:

* ``server.py``: the server roles: ``serve``, ``label-serve``, ``worker``, ``migrate``, ``init``, ``check``;
* ``model_server.py``: ``model-server`` (also ``tensorflow_model_server``): TF Serving's command line;
* ``admin.py``: against the database and blob storage: ``token``, ``gc``, ``export-serving``,
  ``saved-models``, and ``serving-reload`` (to a running TF Serving);
* ``remote.py``: through the registry's HTTP API: ``push``, ``pull``, ``ls``, ``delete``,
  ``allow-ops``, ``serving-versions``;
* ``versions.py``: through the registry's HTTP API: ``version show`` (signatures, prediction output) and
  ``version set --prediction-output``;
* ``edit.py``: through the registry's HTTP API: ``edit`` (a version's preprocessing and description, a
  model's description);
* ``inspect.py``: through the registry's HTTP API: ``show`` (a model or a version), ``predict`` (the label
  service's TF Serving ``:predict``), ``audit`` (the audit log);
* ``labels.py``: through the label service: ``label``, ``compare``; ``comparisons`` (the reports kept);
* ``tags.py``: through the registry's HTTP API: ``tag`` (tags of a model or version) and ``search``
  (versions or models matching a filter);
* ``promotion.py``: through the registry's HTTP API: ``alias`` (move, remove, history, as of a time),
  ``rollback``, ``alias-rule`` (protected aliases, promotion gates) and ``metrics`` (a version's metrics); ``comparisons`` (stored reports);
* ``shadow.py``: through the registry's HTTP API: ``shadow`` (an alias's shadow version: set, stop, and
  how it agreed with the alias's version);
* ``evalsets.py``: through the registry's HTTP API: ``eval-set`` (add, ls, pull and delete a model's
  evaluation sets);
* ``webhooks.py``: through the registry's HTTP API: ``webhook`` (add, ls, deliveries, redeliver, delete);
* ``options.py``, ``local.py``, ``output.py``: ``--url``/``--token`` and the HTTP client; the
  settings, database and blob storage of the commands that use them; tables and progress bars;
* ``wording.py``: the server's HTTP wording (form fields, ``DELETE /api/...``) said the CLI's way.

A registry error (a refused request, an unreachable database, a missing bucket)
becomes a one-line ``Error: ...`` and exit status 1 in one place,
:meth:`RegistryGroup.invoke`, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from registry import native_logs
from registry.config import SettingError
from registry.cli.wording import for_cli
from registry.errors import RegistryError

# command name -> the module of registry.cli that defines it (as a function named like the command)
COMMANDS = {
    "serve": "server", "label-serve": "server", "worker": "server", "migrate": "server", "init": "server",
    "check": "server", "model-server": "model_server",
    "token": "admin", "gc": "admin", "export-serving": "admin", "saved-models": "admin",
    "serving-reload": "admin",
    "push": "remote", "pull": "remote", "ls": "remote", "alias": "promotion", "rollback": "promotion", "delete": "remote",
    "allow-ops": "remote", "serving-versions": "remote", "version": "versions", "edit": "edit",
    "show": "inspect", "predict": "inspect", "audit": "inspect",
    "label": "labels", "compare": "labels", "tag": "tags", "search": "tags", "alias-rule": "promotion", "metrics": "promotion", "comparisons": "labels", "auto-compare": "labels", "shadow": "shadow",
    "eval-set": "evalsets", "webhook": "webhooks",
}


# how --help groups the commands: by what they work on
SECTIONS = [
    ("Set up and run the registry (on REGISTRY_HOME or REGISTRY_DATABASE_URL)", ("server", "model_server"), ()),
    ("Through the HTTP API (--url or REGISTRY_URL, --token or REGISTRY_TOKEN)",
     ("remote", "versions", "edit", "inspect", "labels", "tags", "promotion", "shadow", "evalsets", "webhooks"), ()),
    ("On the database and blob storage directly (REGISTRY_HOME or REGISTRY_DATABASE_URL)", ("admin",),
     ("serving-reload",)),
    ("To a running TF Serving (its gRPC port)", (), ("serving-reload",)),
]


class RegistryGroup(click.Group):
    """Subcommands loaded from their module on first use; registry errors turned into CLI errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands in sections: which run the registry, which talk HTTP, which open the database."""
        limit = formatter.width - 6 - max(len(name) for name in self.list_commands(ctx))
        for title, modules, names in SECTIONS:
            rows = []
            for name in self.list_commands(ctx):
                module = COMMANDS.get(name)
                in_section = name in names if not modules else module in modules and name not in names
                if not in_section:
                    continue
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit)))
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = importlib.import_module(f"registry.cli.{COMMANDS[cmd_name]}")
            self.add_command(getattr(module, cmd_name.replace("-", "_")), cmd_name)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RegistryError as exc:  # the client's errors too (ClientError): what went wrong and what to do
            raise click.ClickException(for_cli(exc.message)) from None
        except SettingError as exc:  # a REGISTRY_* variable it cannot use: its message names it
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            fault = database_fault(exc)
            if fault is None:
                raise
            raise click.ClickException(fault) from None


def database_fault(exc: BaseException) -> str | None:
    """A one-line message for a database that cannot be reached or used (a server or command started
    against it), or None when ``exc`` is not a database driver's error."""
    sqlalchemy = sys.modules.get("sqlalchemy.exc")  # loaded only by commands that open the database
    if sqlalchemy is None or not isinstance(exc, sqlalchemy.DBAPIError):
        return None
    from registry.errors import database_fault as fault_of

    fault = fault_of(exc)
    detail = fault.message if fault is not None else str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return f"{detail.removesuffix(' Nothing was changed: try again shortly.')} Check REGISTRY_DATABASE_URL (or " \
           "REGISTRY_HOME) and that the database is running."


@click.group(cls=RegistryGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.version_option(package_name="tf-model-registry", prog_name="registry",
                      message="%(prog)s %(version)s")
def main(verbose: bool) -> None:
    """A model registry for TensorFlow checkpoints and frozen graphs."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:  # TensorFlow's native start-up lines too, here and in the processes this one starts
        os.environ[native_logs.SHOW_ENV] = "1"
    else:
        logging.getLogger("alembic").setLevel(logging.WARNING)
        for name in ("botocore", "boto3", "s3transfer", "urllib3"):  # credential lookups, retries
            logging.getLogger(name).setLevel(logging.WARNING)
