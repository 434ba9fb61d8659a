"""Python scripts and `python -m` modules run as the interpreter runs them, each in a process of its own,
forked from one interpreter that has imported torch, torchvision, timm and cmtnet once (as
tests/test_imports.py forks): the seconds those imports take are paid once per test process, not once per
script, server or training run.

The child changes to its working folder and environment, sends its standard output and error to files of
its own (or to /dev/null) and runs the script (its folder first on `sys.path`) or the module as `__main__`;
its exit status is the script's. The server itself runs no torch op, so no thread pool is forked.
`shared()` is the test process's one server, whose threads take turns: `run` waits for a script as
`subprocess.run` does, `start` returns at once with a `Child` that the test polls, signals and waits for as a
`subprocess.Popen`.
"""
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Dict, Optional, Sequence

_SERVER = r'''
import json, os, runpy, sys, time, traceback
import torch, torchvision, timm, cmtnet  # noqa: F401  (what every script imports first)


def run(job):
    os.chdir(job['cwd'])
    os.environ.clear()
    os.environ.update(job['env'])
    files = {}
    for fd, path in ((1, job['stdout']), (2, job['stderr'])):
        if path not in files:
            files[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(files[path], fd)
    sys.stdin = open(os.devnull)
    sys.argv = [job['script'], *job['args']]
    try:
        if job['module']:
            runpy.run_module(job['module'], run_name='__main__', alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.abspath(job['script']))
            runpy.run_path(job['script'], run_name='__main__')
        return 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def fork(job):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run(job)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait(pid, timeout, kill):
    """The child's exit status once it ends within `timeout` s; else killed and 'timeout', or None."""
    deadline = time.monotonic() + timeout
    while True:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(raw)
        if time.monotonic() >= deadline:
            if not kill:
                return None
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return 'timeout'
        time.sleep(0.01)


for request in sys.stdin:
    job = json.loads(request)
    if job['op'] == 'run':
        answer = wait(fork(job), job['timeout'], kill=True)
    elif job['op'] == 'start':
        answer = fork(job)
    else:
        answer = wait(job['pid'], job['timeout'], kill=False)
    print(json.dumps(answer), flush=True)
'''


class Child:
    """A child started by `ForkServer.start`: what the tests use of `subprocess.Popen`."""

    def __init__(self, server: 'ForkServer', pid: int, args: Sequence[str]) -> None:
        self._server = server
        self.pid = pid
        self.args = list(args)
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.returncode = self._server._ask(op='wait', pid=self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if self.returncode is None:
            self.returncode = self._server._ask(op='wait', pid=self.pid, timeout=1e9 if timeout is None else timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # not reaped yet: the pid is still the child's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The forking interpreter (see the module docstring)."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory()
        self._process = subprocess.Popen([sys.executable, '-c', _SERVER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        self._jobs = 0
        self._lock = threading.Lock()  # one request and its answer at a time, whichever thread asks

    def _ask(self, **request):
        with self._lock:
            self._process.stdin.write(json.dumps(request) + '\n')
            self._process.stdin.flush()
            answer = self._process.stdout.readline()
        if not answer:
            raise RuntimeError(f'the fork server ended (exit status {self._process.wait()})')
        return json.loads(answer)

    def _job(self, op: str, script: str, module: str, args: Sequence[str], cwd: Optional[Path],
             env: Optional[Dict[str, str]], stdout: str, stderr: str, timeout: float):
        return self._ask(op=op, script=script, module=module, args=list(args), cwd=str(cwd or os.getcwd()),
                         env=dict(os.environ if env is None else env), stdout=stdout, stderr=stderr, timeout=timeout)

    def run(self, script: Path, args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """`python SCRIPT ARGS` in `cwd` with `env` (default: this process's), its output captured."""
        with self._lock:
            self._jobs += 1
            out, err = (Path(self._folder.name) / f'{self._jobs}.{name}' for name in ('out', 'err'))
        status = self._job('run', str(script), '', args, cwd, env, str(out), str(err), timeout)
        argv = [sys.executable, str(script), *args]
        if status == 'timeout':
            raise subprocess.TimeoutExpired(argv, timeout)
        return subprocess.CompletedProcess(argv, status, out.read_text(), err.read_text())

    def start(self, module: str, args: Sequence[str], cwd: Optional[Path] = None,
              env: Optional[Dict[str, str]] = None, output: Optional[Path] = None) -> Child:
        """`python -m MODULE ARGS` started, its standard output and error to `output` (default: /dev/null)."""
        path = str(output) if output is not None else os.devnull
        script = os.path.join(os.path.dirname(__import__(module).__file__), '__main__.py')
        pid = self._job('start', script, module, args, cwd, env, path, path, 0)
        return Child(self, pid, [sys.executable, '-m', module, *args])

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(60)
        self._folder.cleanup()


_shared: Optional[ForkServer] = None


def shared() -> ForkServer:
    """This test process's fork server, started at its first use and closed at exit."""
    global _shared
    if _shared is None:
        _shared = ForkServer()
        atexit.register(_shared.close)
    return _shared
