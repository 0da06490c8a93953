"""`local --once`: the README's main job end to end, and nothing left running afterwards."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

from infra.stackfile import REPO_ROOT


def test_local_plane_registers_champion_and_stops_cleanly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "local", "--once", "--workdir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "models:/diabetes@champion -> version 1" in result.stdout
    assert "sample request    POST /invocations (2 rows) -> [" in result.stdout and "from version 1" in result.stdout
    assert (tmp_path / "admin-password").stat().st_mode & 0o077 == 0  # only the owner may read it
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)", result.stdout)
    assert "prometheus        http://127.0.0.1:" in result.stdout
    assert len(urls) >= 4
    for port in urls:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open after --once"


def test_sigterm_stops_the_whole_plane(tmp_path):
    import os
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "infra.cli", "local", "--workdir", str(tmp_path)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = process.stdout.readline()
        output.append(line)
        if "press Ctrl-C" in line or process.poll() is not None:
            break
    ports = re.findall(r"http://127\.0\.0\.1:(\d+)", "".join(output))
    assert len(ports) >= 4, "".join(output)
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", int(port))) != 0, f"port {port} still open after SIGTERM"
