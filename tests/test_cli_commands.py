"""The ``registry`` command loads each group of subcommands from its module on first use
(``registry.cli.COMMANDS``): every command a module defines must be reachable that way."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click

from registry.cli import COMMANDS, main


def test_every_command_defined_in_registry_cli_is_a_registry_subcommand():
    context = click.Context(main)
    for module_name in sorted(set(COMMANDS.values())):
        module = importlib.import_module(f"registry.cli.{module_name}")
        commands = [c for c in vars(module).values()
                    if isinstance(c, click.Command) and c.callback.__module__ == module.__name__]
        nested = {id(sub) for c in commands if isinstance(c, click.Group) for sub in c.commands.values()}
        defined = {c.name for c in commands if id(c) not in nested}
        listed = {name for name, where in COMMANDS.items() if where == module_name}
        assert defined == listed, f"registry/cli/{module_name}.py defines {sorted(defined)}; COMMANDS: {sorted(listed)}"
        for name in listed:
            assert main.get_command(context, name).name == name


def test_a_client_command_does_not_load_the_server():
    code = ("import sys\nfrom registry.cli import main\n"
            "main(['ls', '--help'], standalone_mode=False)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('registry.app', 'registry.cli.server', 'flask', "
            "'sqlalchemy', 'tensorflow'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_push_refuses_the_version_numbers_the_registry_refuses_without_loading_it():
    """`registry push --version-number` writes the registry's limit out (a client command does not load the
    database layer): it must be the one the registry checks."""
    from registry.catalog.versions import MAX_VERSION_NUMBER
    from registry.cli import remote

    assert remote.MAX_VERSION_NUMBER == MAX_VERSION_NUMBER


def test_registry_version_prints_the_installed_package_version():
    from importlib.metadata import version

    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"registry {version('tf-model-registry')}"
