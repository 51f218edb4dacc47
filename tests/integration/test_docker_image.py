"""The Dockerfile is built and run, not described: podman builds it on a Debian base and serves from it.

As a user without Docker Hub would (docs/operate/docker.md): a base image made with ``debootstrap
--variant=minbase`` (python3, python3-venv) from Debian's mirror, imported into podman; the image built
with ``--format docker`` (so the HEALTHCHECK is kept) from the repository's Dockerfile with
``BASE_IMAGE`` pointing at it, installing wheels built on the host (``PIP_NO_INDEX``/``PIP_FIND_LINKS``,
so the build needs no network and trusts no registry certificate). Then, with the ports published on
127.0.0.1 only:

- a non-loopback admin address without a token refuses to start (exit 2, one line): the token rule;
- ``/healthz`` answers, ``/api/stats`` wants the token, the gateway answers (503: an empty pool);
- the image's HEALTHCHECK passes (``podman healthcheck run``);
- a contrib plugin mounted at ``/app/plugins-contrib`` is listed by ``proxy-pool plugins``;
- ``podman stop`` (SIGTERM) ends it cleanly: exit 0.

Skipped without podman (``.ci/run`` installs podman, runc and debootstrap) or when not root. The base
(the slow part: a minute or more) and the wheels are cached between runs: the base as the podman image
``localhost/proxy-pool-test-base:CODENAME``, the wheels under /var/tmp/proxy-pool-test-wheels-KEY.
``containers.conf`` lowers podman's default rlimits to what the machine allows (CONTAINERS_CONF).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "docker-test-token"
CONTRIB_EXAMPLE = ROOT / "docs" / "examples" / "contrib_csv_parser.py"

pytestmark = [
    pytest.mark.skipif(
        shutil.which("podman") is None, reason="podman is not installed (apt-get install podman runc)"
    ),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="podman as root (rootless needs subuids this test does not set up)"
    ),
    pytest.mark.timeout(900),
]


def _codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"') or "bookworm"
    return "bookworm"


CODENAME = _codename()
BASE_IMAGE = f"localhost/proxy-pool-test-base:{CODENAME}"
# one tag per source tree, so runs from two checkouts on one machine never swap images
IMAGE = f"localhost/proxy-pool-test-image:{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=16384:16384"]\n')
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(
    env: dict[str, str], *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def _base_image(env: dict[str, str], tmp: Path) -> None:
    """A Debian base with python3 and venv, made once with debootstrap and kept as a podman image."""
    if podman(env, "image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (apt-get install debootstrap)")
    rootfs = tmp / "rootfs"
    made = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", CODENAME, str(rootfs),
         "http://deb.debian.org/debian"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"debootstrap could not reach Debian's mirror: {made.stderr.strip().splitlines()[-1:]}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        ["podman", "import", "-", BASE_IMAGE],
        stdin=tar.stdout,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tar.stdout is not None
    tar.stdout.close()
    tar.wait(60)
    assert imported.returncode == 0, imported.stderr
    shutil.rmtree(rootfs, ignore_errors=True)


def _wheels() -> Path:
    """The image's dependencies (and setuptools, to build proxy-pool) as wheels, built here by pip with this
    host's index, certificates and cache; kept per dependency list and Python version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["speed"], "setuptools>=68"]
    key = hashlib.sha256(json.dumps([requirements, sys.version_info[:2]]).encode()).hexdigest()[:16]
    wheels = Path(f"/var/tmp/proxy-pool-test-wheels-{key}")
    if (wheels / ".complete").exists():
        return wheels
    shutil.rmtree(wheels, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), *requirements],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"pip could not build the wheels: {done.stderr.strip().splitlines()[-1:]}")
    (wheels / ".complete").touch()
    return wheels


@pytest.fixture(scope="module")
def image(podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    _base_image(podman_env, tmp_path_factory.mktemp("base"))
    wheels = _wheels()
    podman(
        podman_env, "build", "--format", "docker", "--network", "none",
        "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "PIP_NO_INDEX=1",
        "--build-arg", "PIP_FIND_LINKS=/wheels", "--volume", f"{wheels}:/wheels:ro",
        "-t", IMAGE, str(ROOT),
        timeout=600,
    )  # fmt: skip
    return IMAGE


@pytest.fixture
def container(podman_env: dict[str, str], image: str, tmp_path: Path) -> Iterator[str]:
    contrib = tmp_path / "contrib"
    contrib.mkdir()
    shutil.copy(CONTRIB_EXAMPLE, contrib / "csv_export.py")
    contrib.chmod(0o755)
    (contrib / "csv_export.py").chmod(0o644)
    name = f"proxy-pool-test-{os.getpid()}"
    podman(podman_env, "rm", "-f", "-v", name, check=False)
    podman(
        podman_env, "run", "-d", "--name", name,
        "-p", "127.0.0.1::8899", "-p", "127.0.0.1::8898",
        "-e", "PROXY_POOL_ADMIN__LISTEN=0.0.0.0:8898", "-e", f"PROXY_POOL_ADMIN__TOKEN={TOKEN}",
        "-e", "PROXY_POOL_CHECKER__JUDGES=[]", "-e", "PROXY_POOL_CHECKER__INTEGRITY_PAGES=[]",
        "-e", "PROXY_POOL_GATEWAY__DRAIN_TIMEOUT=2",
        "-v", f"{contrib}:/app/plugins-contrib:ro",
        image, "serve", "--no-default-sources",
    )  # fmt: skip
    try:
        yield name
    finally:
        podman(podman_env, "rm", "-f", "-v", name, check=False)


def _published(env: dict[str, str], name: str, port: int) -> tuple[str, int]:
    host, _, published = (
        podman(env, "port", name, f"{port}/tcp").stdout.strip().splitlines()[0].rpartition(":")
    )
    assert host == "127.0.0.1", "published beyond loopback"
    return host, int(published)


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def _wait_healthy(url: str, env: dict[str, str], name: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if _get(url)[0] == 200:
                return
        except OSError:
            pass
        state = podman(env, "inspect", name, "--format", "{{.State.Running}}").stdout.strip()
        assert state == "true", "the container stopped:\n" + podman(env, "logs", name, check=False).stderr
        time.sleep(0.2)  # polling another process's start-up, bounded by the deadline
    pytest.fail("no /healthz within 90 s:\n" + podman(env, "logs", name, check=False).stderr)


def test_a_public_admin_without_a_token_refuses_to_start(podman_env: dict[str, str], image: str) -> None:
    done = podman(
        podman_env, "run", "--rm", "-e", "PROXY_POOL_ADMIN__LISTEN=0.0.0.0:8898", image, "serve",
        "--no-default-sources", check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    # podman's own complaints (no systemd here to time health checks) are not the program's
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("time=")]
    assert len(lines) == 1 and "admin.token" in lines[0], done.stderr


def test_the_image_serves_checks_its_health_loads_contrib_plugins_and_stops_cleanly(
    podman_env: dict[str, str], container: str
) -> None:
    admin = "http://%s:%d" % _published(podman_env, container, 8898)
    _wait_healthy(f"{admin}/healthz", podman_env, container)

    assert _get(f"{admin}/api/stats")[0] == 401
    status, body = _get(f"{admin}/api/stats", TOKEN)
    assert status == 200 and "pool" in json.loads(body)

    gateway = _published(podman_env, container, 8899)
    with socket.create_connection(gateway, timeout=10) as client:
        client.sendall(
            b"GET http://example.invalid/ HTTP/1.1\r\nHost: example.invalid\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := client.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]  # an empty pool says so

    assert (
        "healthz"
        in podman(podman_env, "inspect", container, "--format", "{{json .Config.Healthcheck}}").stdout
    )
    health = podman(podman_env, "healthcheck", "run", container, check=False)
    assert health.returncode == 0, health.stdout + health.stderr

    plugins = podman(podman_env, "exec", container, "proxy-pool", "plugins").stdout
    csv_rows = [row.split() for row in plugins.splitlines() if row.split()[:2] == ["parser", "csv"]]
    assert csv_rows and csv_rows[0][2] == "/app/plugins-contrib/csv_export.py" and csv_rows[0][-1] == "ok", (
        plugins
    )

    podman(podman_env, "stop", "-t", "30", container, timeout=60)
    assert podman(podman_env, "inspect", container, "--format", "{{.State.ExitCode}}").stdout.strip() == "0"
    assert "Traceback" not in podman(podman_env, "logs", container).stderr
