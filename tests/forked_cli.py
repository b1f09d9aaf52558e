"""``python -m craft ARGS`` for the tests, forked from a process that has imported craft already.

Each command still runs as a process of its own: its own exit status, streams,
working directory, environment, signal handlers and interpreter exit (atexit
hooks included). What it skips is starting Python and importing torch, its
compiler and craft: about 6 s of CPU on 2 cores, which the CLI tests paid
a couple of hundred times. Forking after torch is imported is what a
DataLoader's workers do; the server never runs a tensor op or touches a GPU,
so it holds no thread pool or device context for a child to inherit.

The server (``python tests/forked_cli.py``) reads one JSON request a line on
stdin and answers two lines: the command's pid when it starts, then its exit
status (negative: the signal that ended it) when it ends. ``run`` is the client,
with ``subprocess.run``'s result and timeout; it falls back to a fresh
interpreter where the request's environment differs in what is read at start-up.
``start`` is the client for a test that signals the command while it runs (``Popen``'s part).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Read when the interpreter or torch starts: a request that changes one of these gets a fresh interpreter.
STARTUP = ("PYTHON", "OMP_", "MKL_", "CUDA_", "TORCH", "LD_")


def serve() -> None:
    """The server loop: fork a child per request line, report its pid and exit status."""
    # The checkout's craft, as the tests' own process imports it (`python -m pytest` from the root), not
    # whichever copy is installed: `python tests/forked_cli.py` puts only tests/ on the path.
    sys.path.insert(0, str(ROOT))
    import matplotlib

    matplotlib.use("Agg")  # as craft.logging.plot_metrics selects it
    import matplotlib.pyplot  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401

    import craft.cli  # noqa: F401
    import craft.data  # noqa: F401
    import craft.generate  # noqa: F401
    import craft.models  # noqa: F401
    import craft.run  # noqa: F401
    import craft.sweep  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        with warnings.catch_warnings():  # Python 3.12+ warns of forking beside torch's idle thread; both sides leave this
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            run_command(request)  # never returns: the child ends as the command's interpreter would
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


def run_command(request: dict) -> None:
    """In the forked child: become ``python -m craft ARGS`` run in ``cwd`` with ``env``, streams to files."""
    import importlib
    import random
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], os.O_WRONLY), (2, request["stderr"], os.O_WRONLY)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    if "OMP_NUM_THREADS" in os.environ:  # as the variable sets them at start-up: no parallel region has run yet
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    random.seed()  # a fresh interpreter's seed, not the server's
    sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first (a user's plugin module)
    importlib.invalidate_caches()  # files written since the server started
    sys.argv = [str(ROOT / "craft" / "__main__.py"), *request["args"]]
    try:
        runpy.run_module("craft", run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = exit_status(e)
    except KeyboardInterrupt:
        traceback.print_exc()
        status = -signal.SIGINT  # the interpreter ends by the signal
    except BaseException:
        traceback.print_exc()  # as the interpreter prints an uncaught error
        status = 1
    # The interpreter's exit (wait for non-daemon threads, then atexit hooks), less the tear-down of
    # every module: a second of CPU with torch loaded.
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush(), sys.stderr.flush()
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


def exit_status(e: SystemExit) -> int:
    """The status ``sys.exit(code)`` ends the interpreter with: None is 0, a number itself, else printed and 1."""
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


class Server:
    """One server per test process, started on first use; its requests one at a time."""

    def __init__(self) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="forked_cli-", suffix=".log")  # the server's own errors
        self.proc = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, bufsize=0, cwd=ROOT,
        )
        self.env = dict(os.environ)
        self.lock = threading.Lock()
        atexit.register(self.proc.stdin.close)  # end of input ends the server

    def answer(self, timeout: float | None) -> dict | None:
        """The server's next line, or None after ``timeout`` seconds. The pipe is unbuffered: select sees all."""
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()
        if not line:
            said = Path(self.log.name).read_text()[-2000:]
            raise RuntimeError(f"the forked CLI server ended (status {self.proc.wait()}): {said}")
        return json.loads(line)

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        started = self.start(args, cwd, env)
        status = started.wait(timeout)
        return subprocess.CompletedProcess(started.args, status, started.out.read_text(), started.err.read_text())

    def start(self, args: list[str], cwd: Path, env: dict[str, str]) -> Started:
        """The command started; the server is this command's until it ends (``Started.wait``)."""
        self.lock.acquire()
        folder = tempfile.TemporaryDirectory()
        out, err = Path(folder.name, "stdout"), Path(folder.name, "stderr")
        out.touch(), err.touch()
        request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        pid = self.answer(None)["pid"]
        return Started(self, [sys.executable, "-m", "craft", *args], pid, folder, out, err)


class Started:
    """A forked command under way, with the part of ``subprocess.Popen`` the tests use: ``pid``,
    ``poll()``, ``wait(timeout)``, ``kill()``, and its streams' files ``out`` and ``err``."""

    def __init__(self, server: Server, args: list[str], pid: int, folder, out: Path, err: Path) -> None:
        self.server, self.args, self.pid, self.folder, self.out, self.err = server, args, pid, folder, out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode if self.returncode is not None else self._ended(0)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; past ``timeout`` the command is killed (unlike ``Popen.wait``: the server
        is free again) and ``TimeoutExpired`` raised with its output."""
        if self.returncode is None and self._ended(timeout) is None:
            self.kill()
            self._ended(None)
            raise subprocess.TimeoutExpired(self.args, timeout, self.out.read_text(), self.err.read_text())
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)

    def _ended(self, timeout: float | None) -> int | None:
        done = self.server.answer(timeout)
        if done is not None:
            self.returncode = done["status"]
            self.server.lock.release()  # the server takes the next request
        return self.returncode


_server: list[Server] = []


def start(args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> Started:
    """``subprocess.Popen([python, -m, craft, *args], ...)``, forked from the server: ``Started``, whose
    ``err`` file holds its stderr. Only where ``env`` changes nothing read at start-up (see ``run``)."""
    env = dict(os.environ if env is None else env)
    server = _current_server()
    if _startup_changed(env, server):
        raise ValueError("forked_cli.start: the environment changes what the interpreter reads at start-up")
    return server.start(list(args), Path(cwd), env)


def _current_server() -> Server:
    if not _server or _server[0].proc.poll() is not None:
        _server[:] = [Server()]
    return _server[0]


def _startup_changed(env: dict[str, str], server: Server) -> bool:
    changed = {k for k in env.keys() | server.env.keys() if env.get(k) != server.env.get(k)}
    if "OMP_NUM_THREADS" in env:  # the child sets torch's threads to it
        changed.discard("OMP_NUM_THREADS")
    return any(k.startswith(STARTUP) for k in changed)


def run(args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run([python, -m, craft, *args], capture_output=True, text=True, ...)``, forked from the server."""
    env = dict(os.environ if env is None else env)
    server = _current_server()
    if _startup_changed(env, server):
        return subprocess.run([sys.executable, "-m", "craft", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    return server.run(list(args), Path(cwd), env, timeout)


if __name__ == "__main__":
    serve()
