"""Path and name mistakes get hints (issue 15, items 5 and 8): a checkpoint named by one of its files,
a training folder pushed as is, a push with nothing to push, a model name one letter off, ``NAME:v3``
for version 3, and the first token saying that it closes anonymous writes.  The real ``registry``
command (in process) against a real server over HTTP, on a checkpoint TensorFlow wrote."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from registry.cli import main
from registry.client import RegistryClient


def run_cli(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def train(models, tmp_path):
    """A training folder as Saver.save leaves it: model.ckpt.* and the 'checkpoint' state file."""
    folder = tmp_path / "train"
    shutil.copytree(models["resource_meta"].prefix.parent, folder)
    assert (folder / "checkpoint").is_file()
    return folder


def versions(server, name: str) -> list[int]:
    try:
        return [v["version"] for v in RegistryClient(server.url).list_versions(name)]
    except Exception:
        return []


def test_a_checkpoint_file_instead_of_its_prefix_gets_the_prefix(live_server, train):
    for wrong in ("model.ckpt.meta", "model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        result = run_cli("push", "m1", str(train / wrong), "--url", live_server.url)
        assert result.exit_code == 2, result.output
        assert f"did you mean {train / 'model.ckpt'}?" in result.output
    assert versions(live_server, "m1") == []  # nothing was pushed


def test_a_training_folder_pushes_its_latest_checkpoint(live_server, train):
    result = run_cli("push", "m1", str(train), "--url", live_server.url)
    assert result.exit_code == 0, result.output
    assert "m1 version 1: queued" in result.output
    version = RegistryClient(live_server.url).get_version("m1", "1")
    assert sorted(f["filename"] for f in version["files"]) == sorted(
        p.name for p in train.glob("model.ckpt*"))


def test_the_state_file_picks_the_latest_of_several(live_server, train):
    for path in list(train.glob("model.ckpt*")):
        shutil.copy(path, train / path.name.replace("model.ckpt", "model.ckpt-200"))
        path.rename(train / path.name.replace("model.ckpt", "model.ckpt-100"))
    # as Saver writes it, with absolute paths of the machine that trained (the folder was moved since)
    (train / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/train/model.ckpt-200"\n'
                                      'all_model_checkpoint_paths: "/elsewhere/train/model.ckpt-100"\n'
                                      'all_model_checkpoint_paths: "/elsewhere/train/model.ckpt-200"\n')
    assert run_cli("push", "m1", str(train), "--url", live_server.url).exit_code == 0
    files = [f["filename"] for f in RegistryClient(live_server.url).get_version("m1", "1")["files"]]
    assert files and all(f.startswith("model.ckpt-200") for f in files), files

    (train / "checkpoint").unlink()  # several checkpoints and nothing says which is latest: ask
    result = run_cli("push", "m1", str(train), "--url", live_server.url)
    assert result.exit_code == 2
    assert "holds 2 checkpoints and no 'checkpoint' file" in result.output
    assert f"registry push NAME {train}/model.ckpt-" in result.output
    assert versions(live_server, "m1") == [1]


def test_a_missing_prefix_lists_the_checkpoints_there(live_server, train, tmp_path):
    result = run_cli("push", "m1", str(train / "model"), "--url", live_server.url)
    assert result.exit_code == 2
    assert f"no checkpoint at {train / 'model'}" in result.output
    assert f"checkpoints in {train}: {train / 'model.ckpt'}" in result.output

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("push", "m1", str(empty), "--url", live_server.url)
    assert result.exit_code == 2 and "holds no checkpoint" in result.output
    assert "--frozen" in result.output


def test_a_checkpoint_missing_one_kind_of_file_names_that_one(live_server, train):
    prefix = train / "model.ckpt"
    for data in train.glob("model.ckpt.data-*"):
        data.rename(train / ("moved-" + data.name))
    result = run_cli("push", "m1", str(prefix), "--url", live_server.url)
    assert result.exit_code == 1, result.output
    assert f"{prefix}.data-*-of-* files missing ({prefix}.index, {prefix}.meta found)" in result.output
    assert f"{prefix}.index and" not in result.output  # the .index is there: not said missing

    for data in train.glob("moved-*"):
        data.rename(train / data.name.removeprefix("moved-"))
    (train / "model.ckpt.index").unlink()
    result = run_cli("push", "m1", str(prefix), "--url", live_server.url)
    assert result.exit_code == 2, result.output
    assert f"{prefix}.index is missing (1 .data file(s) found)" in result.output
    assert versions(live_server, "m1") == []


def test_push_with_nothing_to_push_lists_every_kind_of_input(live_server):
    result = run_cli("push", "m1", "--url", live_server.url)
    assert result.exit_code == 2
    for kind in ("train/model.ckpt", "train/", "--graph", "--frozen", "--saved-model", "--keras"):
        assert kind in result.output, kind


def test_names_one_letter_off_get_did_you_mean(live_server, train):
    assert run_cli("push", "inception", str(train), "--url", live_server.url).exit_code == 0
    result = run_cli("ls", "inceptoin", "--url", live_server.url)
    assert result.exit_code == 1
    assert "model 'inceptoin' does not exist: did you mean 'inception'?" in result.output
    result = run_cli("pull", "Inception:1", "--url", live_server.url)
    assert "did you mean 'inception'?" in result.output

    # a first push under a close name works (it may be meant) but says what it did
    result = run_cli("push", "inceptio", str(train), "--url", live_server.url)
    assert result.exit_code == 0
    assert "inceptio version 1: queued" in result.output
    assert "note: this push created a new model 'inceptio'; did you mean 'inception'?" in result.output
    result = run_cli("push", "resnet", str(train), "--url", live_server.url)
    assert "note:" not in result.output  # nothing close: no note
    result = run_cli("push", "inception-v1", str(train), "--url", live_server.url)
    assert result.exit_code == 0 and "note:" not in result.output  # a name of its own, not a typo


def test_name_v3_means_version_3(live_server, train):
    for _ in range(3):
        assert run_cli("push", "m1", str(train), "--url", live_server.url).exit_code == 0
    client = RegistryClient(live_server.url)
    assert client.get_version("m1", "v3")["version"] == 3
    assert client.get_version("m1", "V2")["version"] == 2
    result = run_cli("alias", "m1", "v2", "1", "--url", live_server.url)  # it would read as version 2
    assert result.exit_code == 1 and "it reads as version 2" in result.output
    result = run_cli("delete", "m1:v3", "--url", live_server.url)
    assert result.exit_code == 0 and "m1: version 3 deleted" in result.output
    assert versions(live_server, "m1") == [2, 1]
    result = run_cli("delete", "m1:v9", "--url", live_server.url)
    assert result.exit_code == 1 and "has no version 9 " in result.output


def test_the_first_token_says_it_closes_anonymous_writes(tmp_path):
    home = tmp_path / "home"
    env = {"REGISTRY_HOME": str(home)}
    assert run_cli("init", env=env).exit_code == 0
    first = run_cli("token", "create", "--name", "ci", "--scope", "write", env=env)
    assert first.exit_code == 0, first.output
    assert "writes without a token are now closed" in first.output
    assert "reading stays open" in first.output
    second = run_cli("token", "create", "--name", "admin", "--scope", "admin", env=env)
    assert second.exit_code == 0
    assert "now closed" not in second.output  # they already were
    assert second.output.strip().splitlines()[-1].startswith("rgt_")


def test_serving_versions_shows_the_setting_and_warns_about_versions_not_ready(live_server, train):
    assert run_cli("push", "m1", str(train), "--url", live_server.url).exit_code == 0
    shown = run_cli("serving-versions", "m1", "--url", live_server.url)
    assert shown.exit_code == 0
    assert "m1: serving every aliased version and the newest ready one (the default)" in shown.output
    chosen = run_cli("serving-versions", "m1", "1", "--url", live_server.url)
    assert chosen.exit_code == 0 and "m1: serving 1" in chosen.output
    assert "warning: version 1 is not served while it is queued" in chosen.output  # no worker here
    assert "m1: serving 1 (change it" in run_cli("serving-versions", "m1", "--url", live_server.url).output
    both = run_cli("serving-versions", "m1", "1", "--default", "--url", live_server.url)
    assert both.exit_code == 2


def test_serving_reload_says_it_could_not_reach_tf_serving_and_stays_quiet(live_server, tmp_path):
    """Not "refused": a closed port is unreachable, an HTTP port is no gRPC port.  TensorFlow's native
    start-up lines (the protos load it) are not shown."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    config = tmp_path / "models.config"
    config.write_text('model_config_list {\n  config {\n    name: "a"\n    base_path: "/models/a"\n'
                      '    model_platform: "tensorflow"\n  }\n}\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    http_port = live_server.url.rsplit(":", 1)[1]
    cli = Path(sys.executable).with_name("registry")
    for port, expected in ((closed, f"could not reach TF Serving at 127.0.0.1:{closed} (connection refused)"),
                           (http_port, f"127.0.0.1:{http_port} answered, but not as a gRPC server")):
        result = subprocess.run([str(cli), "serving-reload", "--target", f"127.0.0.1:{port}", "--config",
                                 str(config), "--timeout", "5"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [f"Error: {expected}" + result.stderr.split(expected, 1)[1]
                                                      .splitlines()[0]], result.stderr
        assert "refused the config" not in result.stderr and "oneDNN" not in result.stderr


def _every_command():
    """(path, command) for every command and subcommand of ``registry``."""
    import click

    ctx = click.Context(main)
    stack = [((name,), main.get_command(ctx, name)) for name in main.list_commands(ctx)]
    while stack:
        path, command = stack.pop()
        yield path, command
        if isinstance(command, click.Group):
            stack += [((*path, name), command.get_command(ctx, name)) for name in command.list_commands(ctx)]


def test_every_option_of_every_command_says_what_it_does():
    import click

    missing = [f"registry {' '.join(path)} {param.opts[0]}" for path, command in _every_command()
               for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert missing == []


def test_help_says_which_commands_use_http_and_which_the_database():
    text = run_cli("--help").output
    http = text.index("Through the HTTP API")
    database = text.index("On the database and blob storage directly")
    assert http < database
    section = {}
    for line in text.splitlines():
        name = line.strip().split(" ", 1)[0]
        if line.startswith("  ") and name:
            section[name] = "http" if http < text.index(line) < database else "database" if text.index(line) > \
                database else "other"
    for name in ("push", "pull", "ls", "show", "predict", "edit", "label", "audit", "alias"):
        assert section.get(name) == "http", (name, section)
    for name in ("token", "gc", "export-serving", "saved-models"):
        assert section.get(name) == "database", (name, section)


def test_removal_is_spelled_delete_everywhere(live_server):
    """alias --delete, allow-ops --delete, delete NAME:VERSION: no --clear or rm in the help."""
    for path, command in _every_command():
        visible = [o for p in command.params if not getattr(p, "hidden", False) for o in getattr(p, "opts", [])]
        assert not {"--clear", "--remove", "--rm"} & set(visible), path
        assert path[-1] not in ("rm", "remove"), path


def test_allow_ops_delete_removes_the_ops_named_or_all(live_server, train):
    from registry import auth
    from registry.auth.audit import SYSTEM

    assert run_cli("push", "m1", str(train), "--url", live_server.url).exit_code == 0
    _, admin = auth.create_token(live_server.app.extensions["registry"].db, "root", "admin", SYSTEM)
    args = ["--url", live_server.url, "--token", admin]
    made = run_cli("allow-ops", "m1", "ReadFile", "WriteFile", "--reason", "reads its vocabulary", *args)
    assert "m1: allowed ops: ReadFile, WriteFile" in made.output
    some = run_cli("allow-ops", "m1", "WriteFile", "--delete", *args)
    assert some.exit_code == 0 and "m1: allowed ops: ReadFile" in some.output
    unknown = run_cli("allow-ops", "m1", "PyFunc", "--delete", *args)
    assert unknown.exit_code == 2 and "not on m1's list: PyFunc (it holds: ReadFile)" in unknown.output
    every = run_cli("allow-ops", "m1", "--delete", *args)
    assert every.exit_code == 0 and "m1: allowed ops: none" in every.output
