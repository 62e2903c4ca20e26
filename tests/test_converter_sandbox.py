"""The converter child's least privilege, checked on real children started by run_conversion.

A probe task (``sandbox_probe``) runs in a child confined exactly as a conversion is, and
tries what the sandbox must forbid: reading the registry's secret key, writing outside its
work directory (the venv's site-packages included: the exploit of issue 11 dropped a
.pth there), reaching the network, outliving the conversion.  A pushed checkpoint still
converts in the same sandbox.
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import socket
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import registry
from registry import catalog
from registry.auth.access import secret_key
from registry.converter import landlock
from registry.converter.runner import run_conversion, warm_up
from registry.jobs.worker import Worker
from tests import tfmodels
from tests.conftest import make_settings
from tests.helpers import blob_files, checkpoint_form, push

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux's")
AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="the registry does not run as root here: the child keeps "
                                "its user and gets no namespaces (Landlock alone confines it)")
REPO = Path(registry.__file__).resolve().parent.parent
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def workdir():
    """A conversion folder made the way the worker makes them."""
    path = Path(tempfile.mkdtemp(prefix="registry-convert-sandbox-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


START = {"mode": "cold"}


@pytest.fixture(autouse=True, params=["cold", "warm"])
def start(request):
    """Every check holds for a child started for its job (cold) and for one that imported TensorFlow
    ahead and forked the process doing the work once the job came (warm, REGISTRY_CONVERT_WARM)."""
    START["mode"] = request.param
    yield request.param
    START["mode"] = "cold"


def probe(workdir: Path, *, user: str = "nobody", **request) -> dict:
    warm = START["mode"] == "warm"
    if warm:
        warm_up()
    outcome = run_conversion({"task": "sandbox_probe", **request}, workdir, timeout=60, memory_mb=4096, user=user,
                             warm_start=warm)
    assert outcome.ok, outcome.message
    report = outcome.result["probe"]
    assert report["tensorflow_loaded"] is warm  # the probe ran where it was meant to
    if warm:
        assert report["threads"] == 1  # TensorFlow's threads stayed behind: the sandbox confines the whole process
    return outcome.result


@needs_root
@pytest.mark.parametrize("user, ids", [("nobody", (NOBODY.pw_uid, NOBODY.pw_gid)), ("4321:4322", (4321, 4322))])
def test_child_of_a_root_registry_runs_as_the_configured_user_without_groups_or_capabilities(workdir, user, ids):
    result = probe(workdir, user=user)
    report = result["probe"]
    assert (report["uid"], report["gid"], report["groups"]) == (*ids, [])
    assert int(report["cap_eff"], 16) == 0
    assert result["sandbox"]["uid"] == ids[0]
    assert report["tmpdir"] == report["home"] == os.path.realpath(workdir)


def test_child_cannot_read_the_secret_key_or_the_database(workdir, tmp_path):
    from registry.app import create_app

    settings = make_settings(tmp_path / "home")
    app = create_app(settings)  # makes REGISTRY_HOME, its secret key and its SQLite file as a server does
    app.extensions["registry"].db.dispose()
    secrets = [settings.home / "secret_key", settings.home / "registry.db"]
    assert all(p.stat().st_size > 0 for p in secrets)
    report = probe(workdir, read=[str(p) for p in secrets])["probe"]
    assert all(outcome != "read" for outcome in report["read"].values()), report["read"]


def _visible_folder() -> Path:
    """A writable folder the sandbox does not hide (it hides /tmp, /var/tmp, /dev/shm and /run, where
    a CI clone of the repository may well sit), so that only Landlock can refuse what is in it."""
    hidden = ("/tmp", "/var/tmp", "/dev/shm", "/run")
    for folder in (REPO, Path("/srv"), Path("/")):
        resolved = str(folder.resolve())
        if not any(resolved == h or resolved.startswith(h + "/") for h in hidden) and os.access(folder, os.W_OK):
            return folder
    pytest.skip("no writable folder outside the ones the sandbox hides")


@pytest.mark.skipif(landlock.abi_version() < 1, reason="no Landlock in this kernel")
def test_secret_key_left_readable_to_everyone_is_still_out_of_the_childs_reach(workdir):
    """Neither in /tmp nor behind a folder the child's user cannot traverse: only Landlock
    (which confines the child whatever its user) stands between it and the key."""
    home = Path(tempfile.mkdtemp(prefix=".sandbox-test-home-", dir=_visible_folder()))
    try:
        key = home / "secret_key"
        secret_key(make_settings(home))
        home.chmod(0o755)
        key.chmod(0o644)
        report = probe(workdir, user="root", read=[str(key)])["probe"]
        assert report["read"][str(key)] == "EACCES"
    finally:
        shutil.rmtree(home)


def test_child_cannot_write_outside_its_work_directory(workdir, tmp_path):
    mark = uuid.uuid4().hex[:8]
    site_packages = Path(sysconfig.get_paths()["purelib"])
    outside = [tmp_path / f"escaped-{mark}", Path(tempfile.gettempdir()) / f"escaped-{mark}",
               Path("/var/tmp") / f"escaped-{mark}", Path("/dev/shm") / f"escaped-{mark}",
               REPO / f"escaped-{mark}", Path(registry.__file__).parent / f"escaped_{mark}.py",
               site_packages / f"escaped-{mark}.pth", Path(sys.base_prefix) / f"escaped-{mark}"]
    outside = [p for p in outside if p.parent.is_dir()]
    inside = workdir / "inside.txt"
    try:
        report = probe(workdir, write=[str(p) for p in [*outside, inside]])["probe"]
        assert report["write"].pop(str(inside)) == "written"
        assert [p for p, outcome in report["write"].items() if outcome == "written"] == []
        assert [p for p in outside if p.exists()] == []
    finally:
        for path in outside:
            path.unlink(missing_ok=True)


def test_child_has_no_network(workdir):
    if not AS_ROOT and landlock.abi_version() < 4:
        pytest.skip("not root (no network namespace) and no Landlock TCP rules (Linux 6.7+)")
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagrams:
        datagrams.bind(("127.0.0.1", 0))
        tcp_port, udp_port = server.getsockname()[1], datagrams.getsockname()[1]
        result = probe(workdir, connect=[["127.0.0.1", tcp_port], ["127.0.0.1", 5432]],
                       udp=[["127.0.0.1", udp_port]] if AS_ROOT else [])
        assert select.select([server, datagrams], [], [], 0.5)[0] == []  # nothing arrived
    report = result["probe"]
    assert all(outcome != "connected" for outcome in report["connect"].values()), report["connect"]
    if AS_ROOT:  # its own network namespace: UDP and Unix sockets too, not only TCP
        assert report["interfaces"] == ["lo"]
        assert report["udp"][f"127.0.0.1:{udp_port}"] == "ENETUNREACH"
        assert result["sandbox"]["network"].startswith("none")


@needs_root
def test_child_sees_no_other_process_and_leaves_none_behind(workdir):
    report = probe(workdir, linger=60)["probe"]
    assert report["pids"] == [1, 2]  # its PID namespace's init and itself
    marker = str(workdir).encode()
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                left.append(int(entry.name))
        except OSError:
            pass
    assert left == []  # the process it started in a session of its own died with the conversion


@needs_root
def test_unknown_convert_user_is_refused_naming_the_setting(workdir):
    with pytest.raises(ValueError, match="REGISTRY_CONVERT_USER='no-such-user-here' names no user"):
        probe(workdir, user="no-such-user-here")


def test_pushed_checkpoint_still_converts_in_the_sandbox_and_its_blobs_stay_private(client, registry, models,
                                                                                     workdir):
    model = models["resource_meta"]
    assert push(client, "cnn", checkpoint_form(model)).status_code == 202
    blobs = {p: (p.stat().st_mode & 0o777, p.stat().st_uid, p.read_bytes()) for p in
             blob_files(registry.settings.home)}
    worker = Worker(registry.settings, registry.db, registry.storage)
    request = worker._prepare(catalog.get_version(registry.db, "cnn", "1"), workdir)  # symlinks into the blobs
    started = time.perf_counter()
    outcome = run_conversion(request, workdir, timeout=120, memory_mb=8192)
    assert outcome.ok, outcome.message
    print(f"sandboxed conversion: {time.perf_counter() - started:.2f} s")
    if AS_ROOT:
        assert outcome.result["sandbox"]["uid"] == NOBODY.pw_uid
    assert outcome.result["conversion"]["verification"]["status"] == "passed"
    output = tfmodels.run_frozen(workdir / "frozen.pb", model.output, model.test_input)
    np.testing.assert_allclose(output, model.expected, atol=1e-5)
    assert {p: (p.stat().st_mode & 0o777, p.stat().st_uid, p.read_bytes()) for p in blobs} == blobs


def test_secret_key_database_and_home_are_readable_by_their_owner_only(tmp_path):
    from registry.app import create_app

    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "secret_key").write_text("left readable by an older version\n")
    (home / "secret_key").chmod(0o644)
    settings = make_settings(home)
    app = create_app(settings)
    app.extensions["registry"].db.dispose()
    modes = {p.name: p.stat().st_mode & 0o777 for p in [home, *home.glob("secret_key"), *home.glob("registry.db*")]}
    assert modes["home"] == 0o700
    assert {name: mode for name, mode in modes.items() if name != "home"} == {
        name: 0o600 for name in modes if name != "home"}
    assert {"secret_key", "registry.db"} <= set(modes)


def test_a_job_waiting_for_its_converter_template_to_start_keeps_renewing_its_lease():
    """A template still importing TensorFlow (seconds on a busy machine) must not let the job's lease run
    out: another worker would take a job that is not lost.  A real template process, started here."""
    from registry.converter import runner, warm

    template = warm.Template(runner._child_env(warm.HOME))
    try:
        beats = []
        assert template.wait_ready(120, heartbeat=lambda: beats.append(time.monotonic()) or True, heartbeat_every=0.2)
        assert len(beats) >= 2  # renewed while TensorFlow was imported, not only before or after
        assert all(b - a < 1.0 for a, b in zip(beats, beats[1:]))
    finally:
        template.stop()
    template = warm.Template(runner._child_env(warm.HOME))
    try:
        started = time.monotonic()
        with pytest.raises(warm.LeaseLost):  # the lease went elsewhere: stop waiting, do not start the job
            template.wait_ready(120, heartbeat=lambda: False, heartbeat_every=0.2)
        assert time.monotonic() - started < 5
    finally:
        template.stop()

