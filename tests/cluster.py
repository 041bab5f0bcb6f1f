"""A PostgreSQL cluster a test owns, so it can restart it: initdb into a temporary directory, TCP on a free port.

It uses the server binaries the embedded PostgreSQL (pgserver) ships, so it needs nothing from the machine.
As root, PostgreSQL refuses to run, so the cluster runs as pgserver's own system user, as the embedded server
does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pgserver._commands import POSTGRES_BIN_PATH


class Cluster:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="orch-cluster-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.sockets = self.base / "sockets"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists("pgserver")
            assert entry is not None
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
            self.data.mkdir(mode=0o700)
            self.sockets.mkdir()
            self.log.touch()
            for path in (self.data, self.sockets, self.log):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid}
        self.sockets.mkdir(exist_ok=True)
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", "postgres", "--encoding=utf8")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart``: every session is terminated, the server is back when this returns.

        ``fast`` shuts down cleanly; ``immediate`` is a crash (no checkpoint), so the start runs WAL recovery.
        """
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-m", mode, "restart")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        with tempfile.TemporaryFile() as output:  # pg_ctl's children keep a pipe open: use a file, not a pipe
            done = subprocess.run(
                [str(POSTGRES_BIN_PATH / program), *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                **self._as,
            )
            if done.returncode != 0:
                output.seek(0)
                raise RuntimeError(f"{program} failed: {output.read().decode(errors='replace')}")
