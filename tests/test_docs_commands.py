"""docs/*.md run as written: every command of their bash blocks is accepted by the real `cmtnet` parser (or
the benchmark script's), every make target they name exists, and their Python (blocks, and scripts fed to
`python - <<EOF`) compiles and imports only what exists; the Python blocks run, against stand-in released
checkpoints in a temporary working folder.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from markdown_blocks import (ROOT, blocks, by_file, check_cmtnet_argv, cmtnet_argv, commands, import_lines,
                             make_targets, makefile_targets, released_files, script_argv, write_stand_ins)

DOCS = sorted((ROOT / 'docs').glob('*.md'))
# the docs blocks marked as not run here (where: reason)
EXPECTED_SKIPS: dict = {
    'docs/fast-paths.md:140': 'needs an exported cmt_ti.onnx and a photo.jpg; tests/deploy/test_export.py runs it',
}
# benchmark scripts documented as a command: their arguments are the command's
SCRIPT_COMMANDS = {'benchmarks/bench_inference.py': ['bench']}


def _blocks(lang):
    return [b for path in DOCS for b in blocks(path) if b.lang == lang]


def _commands():
    return [c for b in _blocks('bash') for c in commands(b)[0]]


# prints {script: [exit status, --help output]}: each script's `--help` in one interpreter, which pays the start-up
# (torch, timm) once instead of once per script
_HELPS = """
import contextlib, io, json, os, runpy, sys
helps = {}
for script in sys.argv[1:]:
    sys.argv, out = [script, '--help'], io.StringIO()
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))  # as `python script` runs it
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name='__main__')
        status = 'returned without exiting'
    except SystemExit as e:
        status = e.code
    sys.path.pop(0)
    helps[script] = [status, out.getvalue()]
print(json.dumps(helps))
"""


def _script_flags(scripts) -> dict:
    """{script: the flags its --help lists} of the benchmark scripts `scripts` (paths from the root)."""
    result = subprocess.run([sys.executable, '-c', _HELPS, *sorted(set(scripts))], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    helps = json.loads(result.stdout.splitlines()[-1])
    failed = {script: status for script, (status, _) in helps.items() if status not in (0, None)}
    assert not failed, f'--help failed: {failed}\n{result.stderr[-2000:]}'
    flag = re.compile(r'(?<![\w-])--[a-z0-9][a-z0-9-]*')
    return {script: frozenset(flag.findall(out)) for script, (_, out) in helps.items()}


def test_skip_marks_are_the_expected_ones():
    marked = {b.where: b.skip for path in DOCS for b in blocks(path) if b.skip}
    assert marked == EXPECTED_SKIPS


def test_commands_parse_and_make_targets_exist():
    cmds = _commands()
    refused, unknown_targets, other = {}, [], []
    counted = {'cmtnet': [], 'script': [], 'heredoc': [], 'make': []}
    scripts = [s[0] for c in cmds if (s := script_argv(c.tokens)) and s[0] not in SCRIPT_COMMANDS
               and (ROOT / s[0]).is_file()]
    flags_of = _script_flags(scripts)
    for c in cmds:
        argv, script, targets = cmtnet_argv(c.tokens), script_argv(c.tokens), make_targets(c.tokens)
        if argv is not None:
            counted['cmtnet'].append(c)
            if why := check_cmtnet_argv(argv):
                refused[c.where] = why
        elif script is not None:
            counted['script'].append(c)
            name, args = script
            if name in SCRIPT_COMMANDS:
                why = check_cmtnet_argv([*SCRIPT_COMMANDS[name], *args])
            elif not (ROOT / name).is_file():
                why = f'no file {name}'
            else:
                flags = flags_of[name]
                bad = [a.split('=')[0] for a in args if a.startswith('--') and a.split('=')[0] not in flags]
                why = f'not a flag of {name}: {bad}' if bad else None
            if why:
                refused[c.where] = why
        elif Path(c.tokens[0]).name.startswith('python') and c.tokens[1:2] == ['-']:
            counted['heredoc'].append(c)  # a script on stdin: test_python_scripts_compile_and_import_what_exists
        elif targets is not None:
            counted['make'].append(c)
            unknown_targets += [f'{c.where}: make {t}' for t in targets if t not in makefile_targets()]
        else:
            other.append(f'{c.where}: {c.text}')
    assert not refused
    assert not unknown_targets
    named = {t for path in DOCS for t in re.findall(r'`make ([\w-]+)', path.read_text())}
    assert named <= makefile_targets(), named - makefile_targets()
    assert not other, 'a command the test does not know how to check'
    assert len(counted['cmtnet']) >= 15 and len(counted['script']) >= 4
    # every doc that shows commands is covered
    assert {'docs/analysis.md', 'docs/detection-training.md', 'docs/speed.md'} <= set(by_file(cmds))


def test_python_scripts_compile_and_import_what_exists():
    scripts = [(b.where, b.code) for b in _blocks('python')]
    scripts += [(f'{b.path.relative_to(ROOT)}:{line}', body) for b in _blocks('bash') for line, body in commands(b)[1]]
    assert len(scripts) >= 5
    for where, code in scripts:
        compile(code, where, 'exec')
    imports = '\n'.join(import_lines(code) for _, code in scripts)
    result = subprocess.run([sys.executable, '-c', imports], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


PYTHON_DOCS = [p.name for p in DOCS if any(b.lang == 'python' and not b.skip for b in blocks(p))]
# runs each page's Python blocks in one interpreter, which pays the start-up once: each page in a namespace and
# a working folder of its own, its blocks in order as a user pasting them; writes {page: None, or the traceback
# of the block that failed} to argv[2]
_PAGES = """
import json, os, sys, traceback
failed = {}
for doc, folder, python in json.loads(sys.argv[1]):
    os.chdir(folder)
    namespace = {'__name__': '__main__'}
    try:
        for line, code in python:
            exec(compile('\\n' * line + code, doc, 'exec'), namespace)  # tracebacks name the page's lines
        failed[doc] = None
    except BaseException:
        failed[doc] = traceback.format_exc()
with open(sys.argv[2], 'w') as f:
    json.dump(failed, f)
"""


@pytest.fixture(scope='module')
def python_blocks_ran(tmp_path_factory):
    """{page: None, or the traceback of its block that failed}, every page's Python blocks run once."""
    pages = []
    for doc in PYTHON_DOCS:
        python = [b for b in blocks(ROOT / 'docs' / doc) if b.lang == 'python' and not b.skip]
        folder = tmp_path_factory.mktemp(doc.replace('.', '_'))
        write_stand_ins(released_files(''.join(b.code for b in python)), folder)
        pages.append((doc, str(folder), [(b.line, b.code) for b in python]))
    results = tmp_path_factory.mktemp('results') / 'failed.json'
    done = subprocess.run([sys.executable, '-c', _PAGES, json.dumps(pages), str(results)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and results.exists(), done.stderr[-3000:]
    return json.loads(results.read_text())


@pytest.mark.parametrize('doc', PYTHON_DOCS)
def test_python_blocks_run(doc, python_blocks_ran):
    assert python_blocks_ran[doc] is None, python_blocks_ran[doc][-3000:]


def test_commands_are_read_as_a_shell_reads_them(tmp_path):
    doc = tmp_path / 'doc.md'
    doc.write_text('```bash\n'
                   'OMP_NUM_THREADS=1 cmtnet ablate --json > out.json   # a comment\n'
                   'torchrun --nproc_per_node 8 -m cmtnet train --recipe cmt_s \\\n'
                   '    --data /data/imagenet\n'
                   '.venv/bin/python - <<\'EOF\'\nimport cmtnet\nEOF\n'
                   'python -m cmtnet info && make demo\n'
                   '```\n')
    cmds, heredocs = commands(blocks(doc)[0])
    assert [cmtnet_argv(c.tokens) for c in cmds] == [
        ['ablate', '--json'], ['train', '--recipe', 'cmt_s', '--data', '/data/imagenet'], None, ['info'], None]
    assert [c.line for c in cmds] == [2, 3, 5, 8, 8]
    assert heredocs == [(6, 'import cmtnet\n')]
    assert make_targets(cmds[4].tokens) == ['demo']
