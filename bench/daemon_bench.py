"""Benchmark of an idle daemon (``make bench``; not part of the tests).

Over N up-to-date tenants (default 1,000) it starts ``orchestrator serve --interval 5s``, waits until it is
ready, then measures over 30 s its CPU use (as a share of one core) and peak RSS, and how long a tenant added
to the registry takes to be migrated. Goals: under 2 % of one core, under 100 MB, a new tenant within the
interval + 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tenants_bench


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(json.loads(response.read())["ready"])
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    server = tenants_bench.Server(
        os.environ.get("ORCHESTRATOR_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    work = Path(tempfile.mkdtemp(prefix="orchestrator-daemon-bench-"))
    interval = 5.0
    try:
        print(f"setting up {args.tenants} up-to-date tenants (not timed)...", file=sys.stderr)
        root = tenants_bench.orchestrator_base(server, work, args.tenants, "bench_daemon")
        url = server.db_url("bench_daemon")
        env = tenants_bench.orchestrator_env(url)
        subprocess.run(
            [sys.executable, "-m", "orchestrator", "migrate", "--tenants"],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve", "--interval", "5s", "--listen", f"127.0.0.1:{port}"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not ready(port) and time.monotonic() < deadline:
                time.sleep(0.5)
            daemon = psutil.Process(proc.pid)
            time.sleep(interval)  # past the first passes
            before, peak = daemon.cpu_times(), daemon.memory_info().rss
            start = time.monotonic()
            while time.monotonic() - start < args.seconds:
                time.sleep(1)
                peak = max(peak, daemon.memory_info().rss)
            after = daemon.cpu_times()
            elapsed = time.monotonic() - start
            cpu = (after.user + after.system - before.user - before.system) / elapsed * 100
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE SCHEMA tnew")
                added = time.monotonic()
                conn.execute("INSERT INTO tenant_registry VALUES ('tnew')")
                while True:
                    row = conn.execute(
                        "SELECT to_regclass('tnew.tasks') IS NOT NULL AND to_regclass('tnew.comments') IS NOT NULL"
                    ).fetchone()
                    if row and row[0]:
                        break
                    if time.monotonic() - added > 60:
                        sys.exit("the new tenant was not migrated within 60 s")
                    time.sleep(0.05)
                latency = time.monotonic() - added
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        server.drop("bench_daemon")
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nidle daemon benchmark: {args.tenants} up-to-date tenants, serve --interval 5s, {args.seconds} s measured")
    print(f"{'ok    ' if cpu < 2 else 'MISSED'} CPU: {cpu:.2f} % of one core (goal < 2 %)")
    print(f"{'ok    ' if peak < 100 * 2**20 else 'MISSED'} peak RSS: {peak / 2**20:.0f} MB (goal < 100 MB)")
    print(
        f"{'ok    ' if latency <= interval + 1 else 'MISSED'} new tenant migrated after {latency:.2f} s "
        f"(goal <= interval + 1 s = {interval + 1:.0f} s)"
    )


if __name__ == "__main__":
    main()
