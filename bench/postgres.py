"""A private PostgreSQL server for the DBOS-on-PostgreSQL peer, started and stopped by the bench.

`PrivateCluster.start` finds Debian's PostgreSQL binaries (``initdb`` on PATH or
``/usr/lib/postgresql/<version>/bin``; run as root without them, it first tries
``apt-get install -y postgresql``), runs ``initdb`` into a fresh temporary directory and
starts ``postgres`` itself as a child process: ``fsync=on`` and ``synchronous_commit=on``
(durable commits, as the coordinator's journal runs with fsync on), listening on
127.0.0.1 on a free port with its unix socket in the same temporary directory, trust
authentication for the local user ``bench``. PostgreSQL refuses to run as root, so a root
bench runs it as the ``postgres`` user (``nobody`` if there is none).
`PrivateCluster.stop` ends that process (SIGINT: fast shutdown, then SIGKILL) and removes
the directory. Nothing outside the temporary directory is touched, apart from the
package install.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

SUPERUSER = "bench"


class Unavailable(RuntimeError):
    """PostgreSQL's server binaries are not here and could not be installed."""


def _bin_dir() -> str | None:
    found = shutil.which("initdb")
    if found is not None and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(found)), "postgres")):
        return os.path.dirname(os.path.realpath(found))
    dirs = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if os.path.exists(os.path.join(d, "initdb"))]
    return max(dirs, key=lambda d: _version(d.split("/")[-2])) if dirs else None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def _install(log: list[str]) -> None:
    """``apt-get install -y postgresql`` (with an ``apt-get update`` first if that fails), as root only."""
    if shutil.which("apt-get") is None:
        log.append("no apt-get to install it with")
        return
    if os.geteuid() != 0:
        log.append("not root, so not installing it (apt-get install -y postgresql as root would)")
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "postgresql"]
    print("   PostgreSQL not found: apt-get install -y postgresql ...", flush=True)
    for cmd in (install, ["apt-get", "update", "-q"], install):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.append(f"{' '.join(cmd)}: {exc}")
            return
        if out.returncode != 0:
            log.append(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip()[-300:]}")
        elif cmd is install:
            return


def find_binaries() -> str:
    """The directory holding ``initdb`` and ``postgres``, installing PostgreSQL if needed and possible."""
    found = _bin_dir()
    if found is not None:
        return found
    log: list[str] = []
    _install(log)
    found = _bin_dir()
    if found is None:
        raise Unavailable("PostgreSQL (initdb, postgres) not found and not installed: " + "; ".join(log))
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class _Account:
    """Who the server runs as: this process's user, or an unprivileged one when this process is root."""

    uid: int
    gid: int

    @staticmethod
    def choose() -> _Account:
        if os.geteuid() != 0:
            return _Account(os.geteuid(), os.getegid())
        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return _Account(entry.pw_uid, entry.pw_gid)
        raise Unavailable("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")

    @property
    def switch(self) -> bool:
        return self.uid != os.geteuid()

    def run(self, cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
        switch = self.switch
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s,
                              user=self.uid if switch else None, group=self.gid if switch else None,
                              extra_groups=[] if switch else None, cwd="/" if switch else None)

    def popen(self, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        switch = self.switch
        with open(log, "ab") as out:
            if switch:
                os.chown(log, self.uid, self.gid)
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    user=self.uid if switch else None, group=self.gid if switch else None,
                                    extra_groups=[] if switch else None, cwd="/" if switch else None)


class PrivateCluster:
    """One PostgreSQL server in a temporary directory, for the duration of a bench run."""

    def __init__(self) -> None:
        self.root = ""
        self.port = 0
        self.version = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self, timeout_s: float = 60.0) -> None:
        """initdb and start the server; raises `Unavailable` if PostgreSQL is missing, RuntimeError if it fails."""
        bindir = find_binaries()
        account = _Account.choose()
        self.root = tempfile.mkdtemp(prefix="ray-coordinator-bench-pg-")
        os.chmod(self.root, 0o700)
        os.chown(self.root, account.uid, account.gid)
        data, log = os.path.join(self.root, "data"), os.path.join(self.root, "server.log")
        init = account.run([os.path.join(bindir, "initdb"), "-D", data, "-U", SUPERUSER, "-A", "trust",
                            "-E", "UTF8", "--no-instructions"], timeout_s=300)
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {(init.stderr or init.stdout)[-2000:]}")
        with open(os.path.join(data, "PG_VERSION")) as f:
            self.version = f.read().strip()
        for _ in range(3):  # a free port can be taken between finding and binding it
            self.port = _free_port()
            self.proc = account.popen([os.path.join(bindir, "postgres"), "-D", data, "-p", str(self.port),
                                       "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                                       "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "max_connections=200"],
                                      log)
            if self._ready(bindir, timeout_s):
                return
            self._end()
        raise RuntimeError(f"PostgreSQL did not start; its log:\n{_tail(log)}")

    def _ready(self, bindir: str, timeout_s: float) -> bool:
        isready = os.path.join(bindir, "pg_isready")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            out = subprocess.run([isready, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER],
                                 capture_output=True, check=False)
            if out.returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def url(self, database: str | None = None) -> str:
        """A connection URL for a database of this server (DBOS creates it on launch); a fresh name by default."""
        database = database or f"dbos_{uuid.uuid4().hex[:12]}"
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _end(self, timeout_s: float = 30.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown: roll back open transactions, checkpoint, exit
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Stop the server and remove its directory; safe to call more than once."""
        try:
            self._end()
        finally:
            if self.root:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = ""


def _tail(path: str, chars: int = 2000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError as exc:
        return str(exc)
