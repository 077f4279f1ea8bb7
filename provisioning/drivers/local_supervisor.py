"""The local runtime's process supervisor: supervisor's ``supervisord``, driven through its XML-RPC API.

One ``supervisord`` per var directory runs every local instance's process. It lives apart from the hub: it is
started on demand (by the first driver call that needs it, or by ``manage.py local_runtime start`` in
``scripts/dev``), daemonized into a session of its own with a clean environment (no hub secret reaches an
instance), and keeps running when the hub's web and worker processes stop. Its files are under
``<var>/supervisor/``: ``supervisord.conf``, ``supervisord.pid``, ``supervisord.log``, the XML-RPC unix socket
``supervisor.sock`` (under ``/tmp`` when the var path is too long for a socket name), ``programs/<name>.conf``
(one per instance, included by the main config) and ``logs/<name>.log`` (each instance's output).

Programs are added, changed and removed the way ``supervisorctl update`` does it: the program's file is written,
then ``reloadConfig`` tells what changed and ``addProcessGroup`` / ``removeProcessGroup`` apply it, under a file
lock so two workers never interleave. ``autorestart`` is off: the hub's health pass decides when a process that
died is restarted, and when it is flagged instead (provisioning/health.py), so its counts are the truth.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

from django.conf import settings

from provisioning.drivers.base import PermanentDriverError, TransientDriverError
from provisioning.drivers.local_lock import file_lock
from provisioning.drivers.local_paths import var_path

RPC_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 15.0
# A unix socket's path must fit in sun_path (108 bytes on Linux, with the terminating NUL).
SOCKET_PATH_MAX = 100

# supervisor's process states (supervisor.states.ProcessStates), by name.
STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN = (
    "STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"
)

# supervisor's fault codes (supervisor.xmlrpc.Faults) this module tells apart.
BAD_NAME, NOT_RUNNING, ALREADY_STARTED, ALREADY_ADDED = 10, 70, 60, 90


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket, with a time limit on every call."""

    def __init__(self, path: str, timeout: float):
        super().__init__()
        self.socket_path, self.timeout = path, timeout

    def make_connection(self, host):
        return _UnixConnection(self.socket_path, self.timeout)


class Supervisor:
    """The supervisord of one var directory. Every method is safe to call again; none starts a second daemon."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else var_path("supervisor")
        self.programs = self.root / "programs"
        self.logs = self.root / "logs"
        self.config_file = self.root / "supervisord.conf"
        self.pid_file = self.root / "supervisord.pid"
        self.log_file = self.root / "supervisord.log"

    @classmethod
    def default(cls) -> Supervisor:
        return cls(Path(settings.CELLHUB["VAR_DIR"]) / "supervisor")

    # ---- the daemon ---------------------------------------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        path = str(self.root / "supervisor.sock")
        if len(path) <= SOCKET_PATH_MAX:
            return path
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        return str(Path(tempfile.gettempdir()) / f"cellhub-supervisor-{digest}.sock")

    def rpc(self, timeout: float = RPC_TIMEOUT_SECONDS):
        """The XML-RPC proxy (``.supervisor.<method>``). Calls raise ``OSError`` when the daemon is not there."""
        return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(self.socket_path, timeout))

    def running(self) -> bool:
        """True when a supervisord answers on the socket."""
        try:
            return self.rpc(timeout=5).supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def write_config(self) -> None:
        self.programs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        text = "\n".join([
            "; Written by Cell Hub (provisioning/drivers/local_supervisor.py): the local instances' supervisor.",
            "[unix_http_server]",
            f"file={_escape(self.socket_path)}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={_escape(str(self.log_file))}",
            "logfile_maxbytes=5MB",
            "logfile_backups=2",
            f"pidfile={_escape(str(self.pid_file))}",
            f"childlogdir={_escape(str(self.logs))}",
            f"directory={_escape(str(self.root))}",
            "nodaemon=false",
            "identifier=cellhub",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[include]",
            f"files={_escape(str(self.programs))}/*.conf",
            "",
        ])
        write_private(self.config_file, text)

    def ensure_running(self) -> None:
        """Start supervisord (daemonized, in its own session, with a clean environment) unless one answers.

        Raises ``TransientDriverError`` when it does not answer within ``START_TIMEOUT_SECONDS``.
        """
        if self.running():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / ".start.lock"):
            if self.running():
                return
            self.write_config()
            environment = {
                "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                "LANG": "C.UTF-8",
                "HOME": str(self.root),
            }
            # supervisord forks into the background and the command returns; the daemon is not our child.
            result = subprocess.run(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config_file)],
                env=environment, cwd=self.root, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS,
                start_new_session=True,
            )
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if self.running():
                    STARTED[str(self.root)] = self.pid()
                    return
                time.sleep(0.05)
            raise TransientDriverError(
                f"supervisord did not start (exit {result.returncode}): {(result.stderr or result.stdout).strip()}"
                f" — see {self.log_file}"
            )

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop supervisord and with it every instance process it runs; False when none was running."""
        if not self.running():
            return False
        pid = self.pid()
        try:
            self.rpc().supervisor.shutdown()
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            pass  # it may close the socket while answering
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pid is None or not _alive(pid):
                return True
            time.sleep(0.05)
        raise TransientDriverError(f"supervisord (pid {pid}) did not stop within {timeout:g}s")

    def kill(self) -> None:
        """Kill supervisord and every process it runs at once (SIGKILL), for test teardown; nothing graceful."""
        _kill_tree(self.pid() or STARTED.get(str(self.root)))
        STARTED.pop(str(self.root), None)
        Path(self.socket_path).unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)

    # ---- programs -----------------------------------------------------------------------------------------------

    def program_file(self, name: str) -> Path:
        return self.programs / f"{name}.conf"

    def write_program(self, name: str, *, command: list[str], environment: dict[str, str], directory: Path,
                      autostart: bool) -> None:
        """Write (or rewrite) the program's file; ``update`` applies it."""
        lines = [
            f"[program:{name}]",
            "command=" + " ".join(_escape(_quote(part)) for part in command),
            f"directory={_escape(str(directory))}",
            "environment=" + ",".join(f'{key}="{_escape(_env_value(value))}"' for key, value in environment.items()),
            f"autostart={'true' if autostart else 'false'}",
            "autorestart=false",
            # RUNNING from the spawn on: readiness is the server's port answering (the driver waits for it).
            "startsecs=0",
            "startretries=0",
            "stopsignal=TERM",
            "stopwaitsecs=10",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_escape(str(self.logs / f'{name}.log'))}",
            "stdout_logfile_maxbytes=1MB",
            "stdout_logfile_backups=1",
            "",
        ]
        self.programs.mkdir(parents=True, exist_ok=True)
        write_private(self.program_file(name), "\n".join(lines))

    def remove_program(self, name: str) -> None:
        self.program_file(name).unlink(missing_ok=True)

    def update(self) -> None:
        """Apply the program files: add new programs, re-add changed ones (stopping them first), remove deleted
        ones — ``supervisorctl update``. Raises ``TransientDriverError`` when supervisord cannot be reached."""
        self.ensure_running()
        with file_lock(self.root / ".update.lock"):
            try:
                server = self.rpc().supervisor
                [[added, changed, removed]] = server.reloadConfig()
                for name in [*removed, *changed]:
                    _ignoring(lambda n=name: server.stopProcessGroup(n), BAD_NAME, NOT_RUNNING)
                    _ignoring(lambda n=name: server.removeProcessGroup(n), BAD_NAME)
                for name in [*changed, *added]:
                    _ignoring(lambda n=name: server.addProcessGroup(n), ALREADY_ADDED)
            except (OSError, http.client.HTTPException) as error:
                raise TransientDriverError(f"supervisord at {self.socket_path} did not answer: {error}") from error
            except xmlrpc.client.Fault as error:
                raise PermanentDriverError(f"supervisord refused the update: {error.faultString}") from error

    def info(self, name: str) -> dict | None:
        """supervisord's record of the program (``statename``, ``pid``, ``exitstatus``, ``spawnerr``…), or None
        when it does not know it. Starts supervisord when it is not running (which starts its programs)."""
        self.ensure_running()
        try:
            return self.rpc().supervisor.getProcessInfo(name)
        except xmlrpc.client.Fault as error:
            if error.faultCode == BAD_NAME:
                return None
            raise PermanentDriverError(f"supervisord: {error.faultString}") from error
        except (OSError, http.client.HTTPException) as error:
            raise TransientDriverError(f"supervisord at {self.socket_path} did not answer: {error}") from error

    def all_info(self) -> dict[str, dict]:
        """supervisord's record of every program it knows, by name, in one call (``getAllProcessInfo``). Starts
        supervisord when it is not running. Raises ``TransientDriverError`` when it does not answer."""
        self.ensure_running()
        try:
            return {info["name"]: info for info in self.rpc().supervisor.getAllProcessInfo()}
        except xmlrpc.client.Fault as error:
            raise PermanentDriverError(f"supervisord: {error.faultString}") from error
        except (OSError, http.client.HTTPException) as error:
            raise TransientDriverError(f"supervisord at {self.socket_path} did not answer: {error}") from error

    def start(self, name: str) -> None:
        try:
            self.rpc().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as error:
            if error.faultCode != ALREADY_STARTED:
                raise PermanentDriverError(f"supervisord could not start {name}: {error.faultString}") from error
        except (OSError, http.client.HTTPException) as error:
            raise TransientDriverError(f"supervisord at {self.socket_path} did not answer: {error}") from error

    def stop(self, name: str) -> None:
        try:
            _ignoring(lambda: self.rpc().supervisor.stopProcess(name, True), BAD_NAME, NOT_RUNNING)
        except (OSError, http.client.HTTPException) as error:
            raise TransientDriverError(f"supervisord at {self.socket_path} did not answer: {error}") from error

    def wait_for(self, name: str, states: set[str], timeout: float = START_TIMEOUT_SECONDS) -> dict:
        """Poll until the program is in one of ``states`` or has settled elsewhere (FATAL, EXITED, STOPPED);
        returns its last info."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.info(name) or {"statename": UNKNOWN}
            if info["statename"] in states or info["statename"] in {FATAL, EXITED, STOPPED}:
                return info
            if time.monotonic() > deadline:
                return info
            time.sleep(0.05)

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.logs / f"{name}.log"
        try:
            return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


# The supervisords this process started, by root folder: their pids, so a test can kill them even after their
# folder is gone (``kill_started``).
STARTED: dict[str, int | None] = {}


def kill_started() -> None:
    """Kill every supervisord this process started, with the processes it runs (test teardown)."""
    for root, pid in list(STARTED.items()):
        _kill_tree(pid)
        STARTED.pop(root, None)


def _kill_tree(pid: int | None) -> None:
    """SIGKILL ``pid`` and its children (supervisord and the programs it spawned), as /proc lists them."""
    if not pid:
        return
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    for target in [pid, *children]:
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _ignoring(call, *fault_codes):
    try:
        return call()
    except xmlrpc.client.Fault as error:
        if error.faultCode not in fault_codes:
            raise
        return None


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped by its parent has ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def _escape(value: str) -> str:
    """supervisor expands ``%(name)s`` in its config values: a literal percent sign is written twice."""
    return value.replace("%", "%%")


def _quote(part: str) -> str:
    return f'"{part}"' if any(c.isspace() for c in part) else part


def _env_value(value: str) -> str:
    if '"' in value or "\n" in value:
        raise PermanentDriverError("an environment value for supervisord may not hold a double quote or a newline")
    return value


def write_private(path: Path, text: str) -> None:
    """Write readable by the hub's user only (program files carry the database URL, as a Kubernetes Secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
