"""The README's "Push, wait, pull" examples, run as written (issue 15): every command of its fenced
``sh`` blocks goes through the real ``registry`` command against a real server with a converter
worker, on a TF-slim-shaped Inception built here, in a folder laid out as the README assumes.

A ``# ...`` line right after a command is the output the README promises: each must appear in
what the command printed, numbers aside (the model here is a miniature: 32×32 and 7 classes, not
299×299 and 1001).  A promised ``Error: ...`` means the command must fail.  So the README cannot drift from the CLI again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tfmodels

README = Path(__file__).resolve().parents[1] / "README.md"
CLI = Path(sys.executable).with_name("registry")


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def examples(markdown: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines promised right after it) for each command of the ``sh`` blocks.  A
    comment right under a command (or under its promised lines) is output; one after a blank line or
    at the start of a block introduces what follows."""
    found: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```sh\n(.*?)```", markdown, re.DOTALL):
        command, after_command = "", False
        for line in block.splitlines():
            stripped = line.strip()
            if command.endswith("\\"):
                command = command[:-1] + " " + stripped
            elif stripped.startswith("#"):
                if after_command:
                    found[-1][1].append(stripped[1:].strip())
                continue
            elif stripped:
                command = re.sub(r"\s+#\s.*$", "", stripped)  # a trailing comment says why, not what prints
            else:
                after_command = False
                continue
            if not command.endswith("\\"):
                found.append((command, []))
                command, after_command = "", True
    return found


def _numbers_aside(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "N", " ".join(text.split()))


def test_examples_are_found():
    found = examples(section("Push, wait, pull"))
    commands = [c for c, _ in found]
    assert any(c.startswith("registry push inception train/model.ckpt --graph") for c in commands), commands
    assert any(c.startswith("registry pull inception:production") for c in commands)
    push_output = next(out for c, out in found if c.startswith("registry push"))
    assert any("ready" in line for line in push_output), found


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder as the README's user has it: train/model.ckpt.*, the exported inference graph and labels."""
    root = tmp_path_factory.mktemp("readme")
    built = tfmodels.build_inception(root / "built")
    (root / "train").mkdir()
    for path in built.prefix.parent.glob("model.ckpt*"):
        shutil.copy(path, root / "train" / path.name)
    shutil.copy(built.inference_graph, root / "inception_v3_inf_graph.pb")
    (root / "labels.txt").write_text("".join(f"class {i}\n" for i in range(tfmodels.INCEPTION_CLASSES)))
    return root


def test_push_wait_pull_runs_as_written(converting_server, workspace):
    env = {**os.environ, "REGISTRY_URL": converting_server.url, "PATH": f"{CLI.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("REGISTRY_TOKEN", None)
    ran = []
    for command, promised in examples(section("Push, wait, pull")):
        assert command.startswith("registry "), command
        result = subprocess.run(command, shell=True, cwd=workspace, env=env, capture_output=True, text=True,
                                timeout=600)
        printed = result.stdout + result.stderr
        refused = any(line.startswith("Error: ") for line in promised)  # the README shows a mistake's answer
        assert (result.returncode != 0) == refused, f"{command}\n{printed}"
        assert "Traceback" not in printed, printed
        for line in promised:
            assert _numbers_aside(line) in _numbers_aside(printed), f"{command}\npromised: {line}\nprinted:\n{printed}"
        ran.append(command)
    assert (workspace / "inception.pb").stat().st_size > 0  # the pull the README shows wrote its file
    assert len(ran) >= 14
