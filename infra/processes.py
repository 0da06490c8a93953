"""Local servers for tests and the local demo: each in its own process group, on a free
loopback port, stopped with its whole group (`mlflow server` forks workers of its own)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the whole group, then SIGKILL what is left after `timeout` seconds."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        except ProcessLookupError:
            pass

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def start(
    name: str,
    command: Sequence[str],
    *,
    url: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    handle = open(log, "wb")
    process = subprocess.Popen(
        list(command),
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    handle.close()
    return Server(name=name, process=process, url=url, log=log)


def wait_http(server: Server, path: str = "/", *, timeout: float = 60, ok_statuses: tuple[int, ...] = (200,)) -> None:
    """Poll until `path` answers one of `ok_statuses`; raise with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as response:
                if response.status in ok_statuses:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            if exc.code in ok_statuses:
                return
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = str(exc)
        time.sleep(0.25)
    raise RuntimeError(f"{server.name} not ready at {server.url}{path} after {timeout:.0f}s ({last}):\n{server.tail()}")


def start_moto(log_dir: Path) -> Server:
    """A local S3 endpoint (moto's server) on a free loopback port."""
    import sys

    port = free_port()
    server = start(
        "moto",
        [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=log_dir,
    )
    wait_http(server, "/", timeout=30)
    return server


def _debian_binary(package: str, *names: str, label: str | None = None) -> str:
    """The path of the first of `names` on PATH; the error names the Debian package setup installs."""
    import shutil

    for name in names:
        if (binary := shutil.which(name)) is not None:
            return binary
    raise RuntimeError(
        f"{label or names[0]} is not installed: `make setup` installs Debian's {package} package (as root)"
    )


def _ready_or_stopped(server: Server, check: Callable[[Server], None] | None = None) -> Server:
    """Wait for a Prometheus-family server's `/-/ready`, then `check` it; stop it on either failure,
    so a caller never holds a half-started server."""
    try:
        wait_http(server, "/-/ready", timeout=60)
        if check is not None:
            check(server)
    except RuntimeError:
        server.stop()
        raise
    return server


def start_prometheus(
    log_dir: Path,
    targets: Mapping[str, str],
    rules_file: Path | None = None,
    scrape_interval: str = "2s",
    scrape_configs: Sequence[Mapping[str, Any]] = (),
    alertmanagers: Sequence[str] = (),
) -> Server:
    """A real Prometheus (Debian's `prometheus`) on a free loopback port, scraping `targets`
    (job name -> host:port) and evaluating `rules_file`. `scrape_configs` are added as they are
    (a test gives the ones the Prometheus Operator would generate, relabelings included).

    Paths in the generated config are absolute: Prometheus resolves `rule_files` relative to the
    config file's directory, and a glob that matches nothing is not an error, so a path relative
    to the caller's directory would start a Prometheus without alerts. Once it is ready, it must
    report every rule group of `rules_file` (`require_rule_groups`), or it is stopped. Firing alerts go to
    `alertmanagers` (host:port each), if any."""
    import yaml

    binary = _debian_binary("prometheus", "prometheus")
    log_dir = log_dir.resolve()
    port = free_port()
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
        ]
        + [dict(c) for c in scrape_configs],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    written = 0
    if rules_file is not None:
        rules_file = rules_file.resolve()
        written = len((yaml.safe_load(rules_file.read_text()) or {}).get("groups") or [])
        config["rule_files"] = [str(rules_file)]
    config_path = log_dir / "prometheus.yml"
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config))
    server = start(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={log_dir / 'prometheus-data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--storage.tsdb.retention.time=1d",
        ],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=log_dir,
    )
    return _ready_or_stopped(server, lambda ready: require_rule_groups(ready, written))


def require_rule_groups(server: Server, expected: int, *, timeout: float = 10) -> None:
    """Raise unless Prometheus's `/api/v1/rules` lists at least `expected` rule groups within
    `timeout` seconds: a Prometheus that silently loaded fewer rules than written raises no alert."""
    import json

    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(server.url + "/api/v1/rules", timeout=5) as response:
            loaded = len(json.loads(response.read())["data"]["groups"])
        if loaded >= expected:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{server.name} at {server.url} loaded {loaded} rule group(s) of the {expected} written; its log: "
                f"{server.log}"
            )
        time.sleep(0.25)


def start_alertmanager(log_dir: Path, config: Mapping[str, Any]) -> Server:
    """A real Alertmanager (Debian's `prometheus-alertmanager`) on a free loopback port with `config`.

    Its HA gossip listener is turned off (`--cluster.listen-address=`): by default it binds
    0.0.0.0:9094 and looks for peers; a single local instance needs neither."""
    import yaml

    binary = _debian_binary("prometheus-alertmanager", "prometheus-alertmanager", "alertmanager", label="alertmanager")
    log_dir = log_dir.resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = log_dir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    port = free_port()
    server = start(
        "alertmanager",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.path={log_dir / 'alertmanager-data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--cluster.listen-address=",
        ],
        url=f"http://{LOOPBACK}:{port}",
        log_dir=log_dir,
    )
    return _ready_or_stopped(server)
