"""Python scripts run as `python SCRIPT ARG...` runs them, each in a process of its own, forked from one
interpreter that has imported torch, torchvision, timm and cmtnet once (as tests/test_imports.py forks): the
seconds those imports take are paid once per server, not once per script.

The child changes to the script's working folder and environment, puts the script's folder first on
`sys.path`, sends its standard output and error to files of its own and runs the script as `__main__`; its
exit status is the script's. The server itself runs no torch op, so no thread pool is forked.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

_SERVER = r'''
import json, os, runpy, sys, time, traceback
import torch, torchvision, timm, cmtnet  # noqa: F401  (what every script imports first)


def run(job):
    os.chdir(job['cwd'])
    os.environ.clear()
    os.environ.update(job['env'])
    for fd, path in ((1, job['stdout']), (2, job['stderr'])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdin = open(os.devnull)
    sys.argv = [job['script'], *job['args']]
    sys.path[0] = os.path.dirname(os.path.abspath(job['script']))
    try:
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


for request in sys.stdin:
    job = json.loads(request)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run(job)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline, status = time.monotonic() + job['timeout'], None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            status = 'timeout'
        else:
            time.sleep(0.02)
    print(json.dumps(status), flush=True)
'''


class ForkServer:
    """`run(script, args, cwd, env)`: the script run in a child of the server, as `subprocess.run` reports it."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory()
        self._process = subprocess.Popen([sys.executable, '-c', _SERVER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        self._runs = 0

    def run(self, script: Path, args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        self._runs += 1
        out, err = (Path(self._folder.name) / f'{self._runs}.{name}' for name in ('out', 'err'))
        job = dict(script=str(script), args=list(args), cwd=str(cwd), env=dict(env or {}), timeout=timeout,
                   stdout=str(out), stderr=str(err))
        self._process.stdin.write(json.dumps(job) + '\n')
        self._process.stdin.flush()
        answer = self._process.stdout.readline()
        if not answer:
            raise RuntimeError(f'the fork server ended (exit status {self._process.wait()})')
        status = json.loads(answer)
        if status == 'timeout':
            raise subprocess.TimeoutExpired([sys.executable, str(script), *args], timeout)
        return subprocess.CompletedProcess([sys.executable, str(script), *args], status, out.read_text(),
                                           err.read_text())

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait(60)
        self._folder.cleanup()

    def __enter__(self) -> 'ForkServer':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
