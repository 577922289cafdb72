"""The container tier: the image built with podman, run with the smallest privilege set, and the
compose example driven by LibreChat's own client package over the compose network.

- The image builds from a base made here (no registry is reachable) and is cached by a hash of
  its inputs: a second build is a no-op.
- With `--cap-drop ALL` plus exactly the items privileges() lists (no --privileged, podman's
  default seccomp profile), the daemon passes its start-up canaries and answers /health through
  a port published on 127.0.0.1 only.
- Without any one of those items it refuses to start and names what is missing.
- docker-compose.example.yml, with LibreChat's service replaced by a client container running
  @librechat/agents, runs python and bash and downloads a generated file over the compose
  network.

Everything a test creates (containers, the compose network, cgroup parents) carries this test
run's name and is removed by that name afterwards, also when a check fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_librechat_client as client_checks
from tests.e2e.conftest import RESULT_MARKER, agents_client_dir  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "container" / "build.sh"
CONTAINERS_CONF = REPO / "scripts" / "container" / "containers.conf"
COMPOSE_EXAMPLE = REPO / "docker-compose.example.yml"
# From the test extra, beside this interpreter.
COMPOSE_TOOL = Path(sys.executable).with_name("podman-compose")
CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
RUN_TAG = f"sandboxd-ctest-{os.getpid()}"
API_KEY = f"container-tier-key-{os.getpid()}"
# The recommended user namespace (as in docker-compose.example.yml): the container's uids
# 0-65535 are host uids 2000000000 up, so its root is no uid the host trusts.
USERNS_HOST_UID = 2_000_000_000
USERNS_SIZE = 65_536
# The entrypoint's uid range for jails: container uids in a user namespace, else host uids
# (apart from a host install's 300000 and from useradd's subordinate-id blocks).
UID_BASE_IN_USERNS = 1_000
UID_BASE_HOST_UIDS = 1_000_000_000
MINIMAL_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETGID", "CAP_SETUID", "CAP_SYS_ADMIN"]
# Start-up includes the font cache build and the canaries in real jails; generous for a
# loaded 2-core machine, never reached by a healthy start.
START_TIMEOUT_S = 300.0


def _tier_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (rootful podman)"
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/test.sh installs it)"
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return "the container tier's cgroup binds are for cgroup v1 hosts"
    if not all((CGROUP_ROOT / c).is_dir() for c in V1_CONTROLLERS):
        return "needs cgroup v1 controllers " + ", ".join(V1_CONTROLLERS)
    return None


_why_not = _tier_unavailable()
pytestmark = [pytest.mark.container, pytest.mark.skipif(_why_not is not None, reason=_why_not or "")]


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=podman_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


# --- cgroup parents ---------------------------------------------------------------------------

def make_cgroup_parent(name: str, owner: int = 0) -> None:
    """The group whose v1 controllers are bound writable into the container, owned by the
    host uid of the container's root (groups made inside it inherit that owner)."""
    for ctrl in V1_CONTROLLERS:
        group = CGROUP_ROOT / ctrl / name
        group.mkdir(exist_ok=True)
        for path in [group, *group.iterdir()]:
            os.chown(path, owner, owner)


def user_namespace() -> list[str]:
    mapping = f"0:{USERNS_HOST_UID}:{USERNS_SIZE}"
    return ["--uidmap", mapping, "--gidmap", mapping]


def remove_cgroup_parent(name: str) -> list[str]:
    """Remove the group (and what the runtime and the daemon made inside) in every hierarchy
    that has it; return what could not be removed. Called once the container is gone, so
    nothing lives in there any more, but a killed task may take a moment to be released."""
    left: list[str] = []
    for top in CGROUP_ROOT.glob(f"*/{name}"):
        dirs = [Path(d) for d, _, _ in os.walk(top, topdown=False)]
        for d in dirs:
            deadline = time.monotonic() + 10
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        left.append(str(d))
                        break
                    time.sleep(0.05)
    return left


# --- the image --------------------------------------------------------------------------------

def run_build() -> tuple[str, str]:
    """scripts/container/build.sh: (image reference, its log on stderr)."""
    proc = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600, env=podman_env())
    assert proc.returncode == 0, f"build.sh failed:\n{proc.stderr[-4000:]}"
    return proc.stdout.strip().splitlines()[-1], proc.stderr


@pytest.fixture(scope="module")
def image() -> str:
    ref, _ = run_build()
    return ref


# --- one sandboxd container -------------------------------------------------------------------

def privileges(cgroup: str) -> dict[str, list[str]]:
    """The smallest set that passes the canaries here, item by item (on top of --cap-drop ALL).
    SECURITY.md, "Container deployment", says why each is needed."""
    return {
        "CAP_SYS_ADMIN": ["--cap-add", "SYS_ADMIN"],
        "CAP_DAC_OVERRIDE": ["--cap-add", "DAC_OVERRIDE"],
        "CAP_SETUID": ["--cap-add", "SETUID"],
        "CAP_SETGID": ["--cap-add", "SETGID"],
        "CAP_CHOWN": ["--cap-add", "CHOWN"],
        "unmask=/proc/*": ["--security-opt", "unmask=/proc/*"],
        "writable cgroups": [
            arg for ctrl in V1_CONTROLLERS
            for arg in ("--volume", f"{CGROUP_ROOT}/{ctrl}/{cgroup}:{CGROUP_ROOT}/{ctrl}")
        ],
    }


class SandboxdContainer:
    """`podman run` of the image as an operator would, with a port on 127.0.0.1 only."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cgroup = name
        self.url = ""

    def start(self, image: str, without: str | None = None, userns: bool = True,
              extra: tuple[str, ...] = ()) -> None:
        make_cgroup_parent(self.cgroup, USERNS_HOST_UID if userns else 0)
        args = ["run", "--detach", "--name", self.name, "--label", f"org.sandboxd.test={RUN_TAG}",
                "--cap-drop", "ALL", "--cgroup-parent", f"/{self.cgroup}",
                "--publish", "127.0.0.1::8000", "--env", f"SANDBOXD_API_KEY={API_KEY}"]
        if userns:
            args += user_namespace()
        args += extra
        for item, item_args in privileges(self.cgroup).items():
            if item != without:
                args += item_args
        podman(*args, image)

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(podman("inspect", "--type", "container", self.name).stdout)
        return data[0]

    def wait_exit(self) -> int:
        """Block until the container has stopped; its exit code."""
        out = podman("wait", self.name, timeout=START_TIMEOUT_S).stdout.strip()
        return int(out.splitlines()[-1])

    def wait_ready(self) -> None:
        """Until /health answers 200 through the published port, or the container stops."""
        port = podman("port", self.name, "8000/tcp").stdout.strip()
        assert port.startswith("127.0.0.1:"), f"published on {port!r}, want 127.0.0.1 only"
        self.url = f"http://{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.inspect()["State"]["Running"]:
                raise AssertionError(f"container stopped before it was ready:\n{self.logs()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"no /health 200 within {START_TIMEOUT_S} s:\n{self.logs()[-4000:]}")

    def exec_code(self, code: str, api_key: str | None = API_KEY) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if api_key is not None:
            headers["X-API-Key"] = api_key
        req = urllib.request.Request(self.url + "/exec", headers=headers,
                                     data=json.dumps({"lang": "py", "code": code}).encode())
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def remove(self) -> list[str]:
        podman("rm", "--force", "--time", "10", self.name, check=False, timeout=180)
        return remove_cgroup_parent(self.cgroup)


@pytest.fixture
def start_container(image: str) -> Iterator[Callable[..., SandboxdContainer]]:
    made: list[SandboxdContainer] = []

    def start(without: str | None = None, userns: bool = True, extra: tuple[str, ...] = ()) -> SandboxdContainer:
        c = SandboxdContainer(f"{RUN_TAG}-{len(made)}")
        made.append(c)  # before it exists: a failed start is cleaned up too
        c.start(image, without, userns, extra)
        return c

    yield start
    left = [d for c in made for d in c.remove()]
    assert not podman("ps", "-a", "-q", "--filter", f"name={RUN_TAG}").stdout.strip(), "containers left"
    assert not left, f"cgroups left behind: {left}"


# --- tests ------------------------------------------------------------------------------------

def test_build_hash_covers_everything_the_dockerfile_copies() -> None:
    """A COPY source the hash does not cover would leave a stale image in the cache."""
    sources = [src.rstrip("/") for line in (REPO / "Dockerfile").read_text().splitlines()
               if line.startswith("COPY ") for src in line.split()[1:-1]]
    assert sources, "no COPY lines found"
    build = BUILD_SCRIPT.read_text()
    hashed_list = build.split("inputs=(", 1)[1].split(")", 1)[0].split()
    hashed_trees = build.split("find ", 1)[1].split(" -type", 1)[0].split()
    for src in sources:
        assert src in hashed_list or src in hashed_trees, f"{src} is copied but not hashed"


def test_image_is_cached_by_its_inputs(image: str) -> None:
    """A second build with unchanged inputs reuses the image (same ID) and says so."""
    before = podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
    ref, log = run_build()
    assert ref == image
    assert "cached:" in log and "building" not in log, log
    assert podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip() == before
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout)
    assert ref.endswith(":" + labels["org.sandboxd.inputs"][:16])


@pytest.mark.parametrize("userns", [True, False], ids=["user-namespace", "host-uids"])
def test_minimal_privileges_serve(start_container: Callable[..., SandboxdContainer], userns: bool) -> None:
    """--cap-drop ALL plus the minimal set, not privileged, with and without a user namespace:
    canaries pass, /health 200 on loopback, runs need the key, jails use the container's own
    uid range, and the key is in no environment the daemon passes on."""
    c = start_container(userns=userns)
    c.wait_ready()
    info = c.inspect()
    host = info["HostConfig"]
    assert host["Privileged"] is False
    assert sorted(info["EffectiveCaps"]) == MINIMAL_CAPS
    assert [b["HostIp"] for b in host["PortBindings"]["8000/tcp"]] == ["127.0.0.1"]
    # podman's default seccomp filter is on for the container itself.
    status_lines = podman("exec", c.name, "cat", "/proc/1/status").stdout.splitlines()
    assert "Seccomp:\t2" in status_lines, status_lines

    status, body = c.exec_code("print('in the container')", api_key=None)
    assert status == 401, body
    status, body = c.exec_code("print(open('/proc/self/uid_map').read().split()[1])")
    assert status == 200 and body["status"] == "ok", body
    outside_uid = int(body["stdout"])  # as the container sees it
    base = UID_BASE_IN_USERNS if userns else UID_BASE_HOST_UIDS
    assert base <= outside_uid < base + 60000, outside_uid

    # What the container's root is on the host. In the user namespace: an unprivileged uid,
    # so /proc/sys (writable inside because of unmask=/proc/*) refuses it host-wide settings
    # such as kernel.core_pattern. Without one it is the host's root, and nothing but the
    # jail stands between a daemon compromise and the host (SECURITY.md says so). Only
    # access(2) is asked; nothing is written.
    uid_map = podman("exec", c.name, "cat", "/proc/self/uid_map").stdout.split()
    writable = podman("exec", c.name, "sh", "-c", "test -w /proc/sys/kernel/core_pattern", check=False)
    if userns:
        assert uid_map == ["0", str(USERNS_HOST_UID), str(USERNS_SIZE)], uid_map
        assert writable.returncode != 0, "host-wide sysctls writable from the container"
    else:
        assert uid_map == ["0", "0", "4294967295"], uid_map
        assert writable.returncode == 0

    # The entrypoint's umask no longer leaks into the daemon: the font cache it built at start
    # and the state directories are reachable by the jails' uids.
    modes = podman("exec", c.name, "stat", "-c", "%a %n",
                   "/opt/sandboxd/mplconfig", "/opt/sandboxd/run", "/opt/sandboxd/cache").stdout
    assert modes.splitlines() == [
        "755 /opt/sandboxd/mplconfig", "711 /opt/sandboxd/run", "755 /opt/sandboxd/cache"], modes
    fonts = podman("exec", c.name, "ls", "/opt/sandboxd/mplconfig").stdout.split()
    assert any(name.startswith("fontlist-") for name in fonts), fonts

    # Nothing the daemon starts inherits the key: not the daemon, not nsjail, not a jail.
    key_file = podman("exec", c.name, "stat", "-c", "%a %U", "/run/sandboxd-entrypoint/api-keys").stdout
    assert key_file.split() == ["600", "root"], key_file
    # (`podman exec` itself gets the container's configured environment, key included, so
    # the daemon's pid comes from pgrep on its exact command line.)
    pid = podman("exec", c.name, "pgrep", "-x", "-f",
                 "/opt/sandboxd/venv/bin/python3 /opt/sandboxd/venv/bin/sandboxd serve "
                 "--config /run/sandboxd-entrypoint/sandboxd.toml").stdout.split()
    assert len(pid) == 1, pid
    environ = podman("exec", c.name, "cat", f"/proc/{pid[0]}/environ").stdout.split("\0")
    assert any(v.startswith("PATH=") for v in environ), environ
    assert not [v for v in environ if "SANDBOXD_API_KEY" in v or API_KEY in v], environ


def test_mounted_config_is_used_as_is(start_container: Callable[..., SandboxdContainer], tmp_path: Path) -> None:
    """An operator's own /etc/sandboxd/sandboxd.toml wins: its key file and uid range are
    used, and SANDBOXD_API_KEY (set as well) is ignored, not merged in."""
    operator_key = f"operator-key-{os.getpid()}"
    keys = tmp_path / "api-keys"
    keys.write_text(operator_key + "\n")
    # Root-only, where root is the container's: the host uid its root maps to.
    os.chown(keys, USERNS_HOST_UID, USERNS_HOST_UID)
    keys.chmod(0o600)
    config = tmp_path / "sandboxd.toml"
    config.write_text('host = "0.0.0.0"\nuid_base = 20000\nuid_count = 1000\n'
                      '[auth]\nmode = "api_key"\napi_keys_file = "/etc/sandboxd/api-keys"\n')
    config.chmod(0o644)
    c = start_container(extra=("--volume", f"{config}:/etc/sandboxd/sandboxd.toml:ro",
                               "--volume", f"{keys}:/etc/sandboxd/api-keys:ro"))
    c.wait_ready()
    assert "SANDBOXD_API_KEY is ignored" in c.logs()
    status, body = c.exec_code("print(1)")  # the environment's key
    assert status == 401, body
    status, body = c.exec_code("print(open('/proc/self/uid_map').read().split()[1])", api_key=operator_key)
    assert status == 200 and body["status"] == "ok", body
    assert 20000 <= int(body["stdout"]) < 21000, body


# What the daemon's last words name when one item of the set is missing (measured here).
REFUSALS = {
    # No mount(2): not even the daemon's own tmpfs for sources in flight.
    "CAP_SYS_ADMIN": ("cannot mount tmpfs at /opt/sandboxd/run/src: Operation not permitted",),
    # Root cannot open a session's tmpfs, which belongs to the session's uid (mode 0700).
    "CAP_DAC_OVERRIDE": ("refusing to serve: session storage", "Permission denied"),
    # nsjail cannot map the jail's root to the session's outside uid / gid.
    "CAP_SETUID": ("refusing to serve: jail launches", "uid_map", "Operation not permitted"),
    "CAP_SETGID": ("refusing to serve: jail launches", "gid_map", "Operation not permitted"),
    # Files written into a session (uploads, a turn's inputs) cannot be handed to its uid.
    "CAP_CHOWN": ("refusing to serve: session files owned by the session uid", "Operation not permitted"),
    # The kernel refuses a fresh proc mount while the container's /proc is partly masked.
    "unmask=/proc/*": ("refusing to serve: jail launches", "Failed to mount mandatory point: '/proc'"),
    # podman mounts the container's cgroups read-only.
    "writable cgroups": ("cgroup v1 controller memory: cannot create /sys/fs/cgroup/memory/sandboxd: "
                         "Read-only file system",),
}


@pytest.mark.parametrize("item", list(REFUSALS))
def test_each_item_is_needed(start_container: Callable[..., SandboxdContainer], item: str) -> None:
    """Drop one item of the minimal set: the daemon refuses to serve and says why. (The twin,
    the whole set, starts: test_minimal_privileges_serve.)"""
    c = start_container(without=item)
    code = c.wait_exit()
    logs = c.logs()
    assert code != 0, logs[-3000:]
    assert "sandboxd ready" not in logs, logs[-3000:]
    # `sandboxd serve` ends with one line naming the layer (the entrypoint's font-cache step
    # may fail the same way before it; the daemon's verdict is the last word).
    verdict = [line for line in logs.splitlines() if line.startswith("sandboxd: ")][-1]
    for part in REFUSALS[item]:
        assert part in verdict, verdict


# --- the compose example ----------------------------------------------------------------------

def compose_override(image: str, client_dir: Path, node: Path) -> str:
    """LibreChat's image cannot be pulled here: its service becomes a client container running
    @librechat/agents from the same image, as nobody, with the client's node_modules bound
    read-only. The image's node is Debian's 18, older than the package supports, so the node
    that runs the host's end-to-end tier is bound over it. Everything else is the example as
    an operator runs it."""
    return f"""\
services:
  sandboxd:
    image: {image}
  librechat:
    image: {image}
    entrypoint: ["/usr/bin/tini", "--"]
    command: ["sleep", "infinity"]
    user: "65534:65534"
    working_dir: /client
    volumes:
      - {client_dir}:/client:ro
      - {node}:/usr/local/bin/node:ro
    environment:
      # The driver accepts this one non-loopback host (the daemon on the compose network).
      E2E_ALLOWED_HOST: sandboxd
    ports: !reset []
"""


class ComposeStack:
    """podman-compose up of docker-compose.example.yml plus the override, as project `name`."""

    def __init__(self, image: str, client_dir: Path, workdir: Path, name: str) -> None:
        self.project = name
        self.cgroup = name
        override = workdir / "compose.override.yml"
        node = shutil.which("node")
        assert node is not None
        override.write_text(compose_override(image, client_dir, Path(node).resolve()))
        self.files = ["-f", str(COMPOSE_EXAMPLE), "-f", str(override)]
        self.env = {**podman_env(), "SANDBOXD_API_KEY": API_KEY, "SANDBOXD_CGROUP": self.cgroup,
                    "LIBRECHAT_IMAGE": image}
        self.compose = [str(COMPOSE_TOOL), "--project-name", name]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.compose, *self.files, *args], capture_output=True, text=True,
                              timeout=timeout, env=self.env, cwd=COMPOSE_EXAMPLE.parent)

    def up(self) -> None:
        make_cgroup_parent(self.cgroup, USERNS_HOST_UID)
        proc = self.run("up", "--detach")
        assert proc.returncode == 0, f"podman-compose up failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    def container(self, service: str) -> str:
        names = podman("ps", "--all", "--format", "{{.Names}}",
                       "--filter", f"label=io.podman.compose.project={self.project}",
                       "--filter", f"label=io.podman.compose.service={service}").stdout.split()
        assert len(names) == 1, f"{service}: {names}"
        return names[0]

    def network(self) -> str:
        return f"{self.project}_default"

    def down(self) -> list[str]:
        """podman-compose down, then whatever of this project is still there, by label and name."""
        self.run("down", "--timeout", "10", timeout=300)
        left = podman("ps", "--all", "--quiet", "--filter", f"label=io.podman.compose.project={self.project}").stdout
        for cid in left.split():
            podman("rm", "--force", "--time", "5", cid, check=False)
        if podman("network", "exists", self.network(), check=False).returncode == 0:
            podman("network", "rm", "--force", self.network(), check=False)
        return remove_cgroup_parent(self.cgroup)


def driver_in(client: str) -> Callable[..., dict[str, Any]]:
    """tests/e2e's run_driver, but `node driver.mjs` runs in the client container and reaches
    the daemon by its service name on the compose network."""

    def run(scenario: str, suffix: str = "", timeout: float = 600) -> dict[str, Any]:
        cmd = ["exec"]
        if suffix:
            cmd += ["--env", f"LIBRECHAT_CODE_BASEURL=http://sandboxd:8000{suffix}"]
        proc = podman(*cmd, client, "node", "/client/driver.mjs", scenario, check=False, timeout=timeout)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
        assert lines, f"driver {scenario} printed no result ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER):])
        assert proc.returncode == 0 and "fatal" not in result, f"{result.get('fatal')}\n{proc.stderr[-3000:]}"
        assert result["scenario"] == scenario
        observed: dict[str, Any] = result["observed"]
        return observed

    return run


def test_compose_example_serves_librechat_client_over_the_compose_network(
        image: str, agents_client_dir: Path, tmp_path: Path) -> None:
    if not COMPOSE_TOOL.exists():
        pytest.skip("needs podman-compose in the test venv (pip install -e '.[test]')")
    stack = ComposeStack(image, agents_client_dir, tmp_path, f"{RUN_TAG}-compose")
    try:
        stack.up()
        daemon, client = stack.container("sandboxd"), stack.container("librechat")
        # Reachable from LibreChat's side only: nothing of sandboxd is published on the host.
        assert podman("port", daemon).stdout.strip() == ""
        info = json.loads(podman("inspect", "--type", "container", daemon).stdout)[0]
        assert info["HostConfig"]["Privileged"] is False
        assert sorted(info["EffectiveCaps"]) == MINIMAL_CAPS
        uid_map = podman("exec", daemon, "cat", "/proc/self/uid_map").stdout.split()
        assert uid_map == ["0", str(USERNS_HOST_UID), str(USERNS_SIZE)], uid_map
        wait_healthy_from(client, daemon)

        run = driver_in(client)
        client_checks.test_python_hello(run, "")
        client_checks.test_bash_tool(run)
        # Files written by python, fed to the next turn, listed by bash, downloaded by the
        # backend-style client; then an upload, its freshness checks, download and delete.
        client_checks.test_files_across_turns_through_tool_node(run)
        client_checks.test_backend_upload_freshness_download_delete(run, "")
    finally:
        left = stack.down()
    assert podman("network", "exists", stack.network(), check=False).returncode != 0, "compose network left"
    assert not left, f"cgroups left behind: {left}"


def wait_healthy_from(client: str, daemon: str) -> None:
    """Until the client container gets /health 200 from http://sandboxd:8000."""
    probe = ("fetch('http://sandboxd:8000/health').then(r => process.exit(r.status === 200 ? 0 : 1),"
             " () => process.exit(1))")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = json.loads(podman("inspect", "--type", "container", daemon).stdout)[0]["State"]
        if not state["Running"]:
            raise AssertionError("sandboxd stopped:\n" + podman("logs", daemon, check=False).stderr[-4000:])
        if podman("exec", client, "node", "-e", probe, check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError("sandboxd not healthy from the client container:\n"
                         + podman("logs", daemon, check=False).stderr[-4000:])
