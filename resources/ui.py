"""`mmrec ui`: the Dagster UI on 127.0.0.1 with the project's instance, from Dagster's own service commands.

What `dagster dev` starts, started here: one code server for the workspace's code location, and the webserver and
the daemon (sensors, declarative automation, run monitoring) that both read it. `dagster dev` is superseded by
`dg dev` (the `dagster-dg-cli` package, not a dependency here), which runs the same three services through
`dagster dev`; `dagster code-server start`, `dagster-webserver` and `dagster-daemon run` are the first-class
commands for each, as in a deployment.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from dagster._grpc.client import DagsterGrpcClient

from mmrec_pipeline.storage import write_text

LOCATION = "assets.definitions"  # the module workspace.yaml loads, and so the code location's name
HOST = "127.0.0.1"  # never on another interface: the UI can launch runs
CODE_SERVER_START_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def serve_ui(port: int, repo: Path, dagster_home: Path) -> int:
    """Start the three services, wait until one of them ends (or Ctrl-C), stop the others; the exit status."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops the services too, as Ctrl-C does
    bin_dir, code_port = Path(sys.executable).parent, free_port()
    workspace = write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
        "host": HOST, "port": code_port, "location_name": LOCATION}}]}), dagster_home / "ui-workspace.yaml")
    services = [subprocess.Popen([str(bin_dir / "dagster"), "code-server", "start", "-m", LOCATION, "-d", str(repo),
                                  "-h", HOST, "-p", str(code_port), "--location-name", LOCATION], cwd=repo)]
    try:
        wait_for_code_server(code_port, services[0])
        services.append(subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)], cwd=repo))
        services.append(subprocess.Popen([str(bin_dir / "dagster-webserver"), "-w", str(workspace), "-h", HOST,
                                          "-p", str(port)], cwd=repo))
        print(f"Dagster UI: http://{HOST}:{port}  (Ctrl-C stops it)", file=sys.stderr)
        while all(p.poll() is None for p in services):
            time.sleep(1.0)
        return next(p.returncode for p in services if p.returncode is not None)
    except KeyboardInterrupt:
        return 130
    finally:
        stop(services)


def wait_for_code_server(port: int, process: subprocess.Popen) -> None:
    """Until the code server answers with the loaded definitions (the webserver would otherwise show the code
    location as failed until a reload)."""
    client, deadline = DagsterGrpcClient(port=port, host=HOST), time.monotonic() + CODE_SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the code server for {LOCATION} exited with status {process.returncode}")
        try:
            client.list_repositories()
            return
        except Exception:  # noqa: BLE001 - not serving yet (connection refused, still loading)
            time.sleep(1.0)
    raise RuntimeError(f"the code server for {LOCATION} did not load within {CODE_SERVER_START_S:g} s")


def stop(processes: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in processes:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
