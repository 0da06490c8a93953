"""Benchmark: this platform's model server against `mlflow models serve`, side by side.

    make bench        (or: python -m benchmarks.serving [--duration 10] [--connections 16])

Starts moto S3 and the tracking server on loopback, registers the example model, then serves
`models:/diabetes@champion` with both servers (the same number of worker processes each) and
loads each with the same `wrk` settings, for 1-row and 100-row requests. Prints requests per
second and p50/p99 latency, and the ratios against the baseline (`mlflow models serve`).
Target: >= 10x the baseline's throughput on 1-row requests at 16 connections, with p99 at
most a fifth of the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.local import LocalPlane, start_tracking_plane
from infra.processes import LOOPBACK, free_port, start, wait_http
from infra.stackfile import REPO_ROOT
from services.serving.settings import available_cpus

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass
class Result:
    server: str
    rows: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(url: str, body: bytes, *, duration: int, connections: int, threads: int) -> tuple[float, float, float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n')
        script.write(f"wrk.body = {json.dumps(body.decode())}\n")
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    latency = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)}
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?timeout)\s*:?\s*(\d+)", output))
    return rps, latency["50"], latency["99"], errors


def body_of(rows: int) -> bytes:
    from examples.train import training_data

    _, x_test, _, _ = training_data()
    sample = x_test.sample(n=rows, replace=True, random_state=1)
    return json.dumps({"dataframe_split": {"columns": list(sample.columns), "data": sample.values.tolist()}}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves the CPUs to the servers)")
    parser.add_argument("--workers", type=int, default=available_cpus(), help="worker processes for both servers")
    parser.add_argument("--out", default="build/bench/serving.json")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    plane = LocalPlane(workdir=workdir)
    with ExitStack() as stack:
        print(f"[bench] {args.workers} worker(s) per server, wrk -t{args.threads} -c{args.connections} -d{args.duration}s, on {available_cpus()} CPU(s)")
        moto = start_tracking_plane(plane, stack)
        env = {**plane.client_env(), "MLFLOW_S3_ENDPOINT_URL": moto.url, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

        ours_port, theirs_port = free_port(), free_port()
        ours = start("serving", [sys.executable, "-m", "services.serving"], url=f"http://{LOOPBACK}:{ours_port}", log_dir=workdir, cwd=REPO_ROOT,
                     env={**env, "SERVING_MODEL_NAME": plane.model_name, "SERVING_HOST": LOOPBACK, "SERVING_PORT": str(ours_port), "SERVING_WORKERS": str(args.workers)})
        stack.callback(ours.stop)
        theirs = start("mlflow-models-serve", [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{plane.model_name}@champion",
                       "--env-manager", "local", "--host", LOOPBACK, "--port", str(theirs_port), "--workers", str(args.workers)],
                       url=f"http://{LOOPBACK}:{theirs_port}", log_dir=workdir, cwd=REPO_ROOT, env=env)
        stack.callback(theirs.stop)
        wait_http(ours, "/readyz", timeout=120)
        wait_http(theirs, "/ping", timeout=180)

        results = []
        for rows in (1, 100):
            body = body_of(rows)
            for name, server in (("mlflow models serve", theirs), ("platform server", ours)):
                wrk(server.url + "/invocations", body, duration=2, connections=args.connections, threads=args.threads)  # warm-up
                rps, p50, p99, errors = wrk(server.url + "/invocations", body, duration=args.duration, connections=args.connections, threads=args.threads)
                results.append(Result(name, rows, rps, p50, p99, errors))
                print(f"[bench] {name:20} {rows:>3} row(s): {rps:9.1f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  errors {errors}")
        report(results, args)


def report(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(f"{'rows':>4}  {'server':20} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}   {'throughput x':>12} {'p99 / baseline':>14}")
    verdicts = []
    for rows in (1, 100):
        base = next(r for r in results if r.rows == rows and r.server == "mlflow models serve")
        ours = next(r for r in results if r.rows == rows and r.server == "platform server")
        for r in (base, ours):
            ratio = r.requests_per_second / base.requests_per_second
            print(f"{rows:>4}  {r.server:20} {r.requests_per_second:10.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f}   {ratio:11.1f}x {r.p99_ms / base.p99_ms:14.3f}")
        if rows == 1:
            throughput, tail = ours.requests_per_second / base.requests_per_second, ours.p99_ms / base.p99_ms
            verdicts.append(f"1-row target (>= 10x throughput, p99 <= 0.2x): {throughput:.1f}x and {tail:.3f}x -> "
                            + ("MET" if throughput >= 10 and tail <= 0.2 else "NOT MET"))
    print()
    for verdict in verdicts:
        print(verdict)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "cpus": available_cpus(), "results": [asdict(r) for r in results]}, indent=2))
    print(f"results written to {out}")


if __name__ == "__main__":
    main()
