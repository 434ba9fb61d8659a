"""The README runs as written: its Python blocks, pasted in order into one fresh interpreter, and the
commands of its bash blocks, each checked by the real `cmtnet` parser; the cheap ones run.

The released checkpoints the blocks load (`cmt_small.pth`, ...) are stand-ins in the released format,
written under the same names in the temporary working folder the blocks run in. A block that cannot run
here is marked in README.md (`<!-- readme-test: skip (reason) -->` just before it) and listed below.
"""
import json
import re
import subprocess
import sys


from markdown_blocks import (ROOT, RELEASED_FILES, blocks, check_cmtnet_argv, cmtnet_argv, commands,
                             make_targets, makefile_targets, released_files, run_cmtnet, run_cmtnet_commands,
                             write_stand_ins)

README = ROOT / 'README.md'
# the README blocks marked as not run here (where: reason); a new mark must be added here to pass
EXPECTED_SKIPS = {'README.md:137': 'needs a running server: tests/serve/test_api.py runs it against one'}
# the subcommands cheap enough to run as the README writes them
CHEAP = ('info', 'complexity', 'scaling')

# runs the blocks in one interpreter, in order, as a user pasting them; names the block that fails
_SESSION = '''
import json, sys, time
namespace = {'__name__': '__main__'}
for where, line, code in json.loads(sys.argv[1]):
    start = time.perf_counter()
    exec(compile('\\n' * line + code, 'README.md', 'exec'), namespace)  # tracebacks name README.md's lines
    print(f'== {where} ran in {time.perf_counter() - start:.1f} s', flush=True)
print('== all blocks ran', flush=True)
'''


def _blocks(lang):
    return [b for b in blocks(README) if b.lang == lang]


def _commands():
    return [c for b in _blocks('bash') for c in commands(b)[0]]


def test_skip_marks_are_the_expected_ones():
    marked = {b.where: b.skip for b in blocks(README) if b.skip}
    assert marked == EXPECTED_SKIPS
    assert len(_blocks('python')) >= 4


def test_a_skip_mark_is_read_from_the_line_before_the_fence(tmp_path):
    doc = tmp_path / 'doc.md'
    doc.write_text('text\n\n<!-- readme-test: skip (needs CUDA) -->\n```python\nx = 1\n```\n\n```bash\nls\n```\n')
    found = blocks(doc)
    assert [(b.lang, b.line, b.skip, b.code) for b in found] == [
        ('python', 4, 'needs CUDA', 'x = 1\n'), ('bash', 8, None, 'ls\n')]


def test_python_blocks_run_in_order_in_one_interpreter(tmp_path):
    python = [b for b in _blocks('python') if not b.skip]
    code = ''.join(b.code for b in python)
    files = released_files(code)
    assert 'cmt_small.pth' in files
    write_stand_ins(files, tmp_path)
    result = subprocess.run([sys.executable, '-c', _SESSION, json.dumps([(b.where, b.line, b.code) for b in python])],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f'{result.stdout[-3000:]}\n{result.stderr[-5000:]}'
    assert result.stdout.count('== README.md:') == len(python) and '== all blocks ran' in result.stdout
    # the training example left its run behind
    assert list(tmp_path.glob('runs/*/model.safetensors'))


def test_bash_commands_parse_and_make_targets_exist():
    cmds = _commands()
    argvs = [(c, cmtnet_argv(c.tokens)) for c in cmds]
    parsed = [(c, argv) for c, argv in argvs if argv is not None]
    refused = {c.where: why for c, argv in parsed if (why := check_cmtnet_argv(argv))}
    assert not refused
    targets = [(c, t) for c in cmds for t in (make_targets(c.tokens) or [])]
    assert {t for _, t in targets} <= makefile_targets(), [c.where for c, t in targets if t not in makefile_targets()]
    # every command of a bash block is a cmtnet command or a make target
    assert [c.where for c, argv in argvs if argv is None and make_targets(c.tokens) is None] == []
    assert len(parsed) >= 15 and {'demo', 'test', 'detect-demo'} <= {t for _, t in targets}
    # and those the text names (`make demo`)
    named = set(re.findall(r'`make ([\w-]+)', README.read_text()))
    assert named and named <= makefile_targets(), named - makefile_targets()
    subcommands = {argv[0] for _, argv in parsed}
    assert {'train', 'eval', 'predict', 'detect', 'export', 'bench', *CHEAP} <= subcommands


def test_cheap_commands_run_as_written(tmp_path):
    argvs = [argv for c in _commands() if (argv := cmtnet_argv(c.tokens)) and argv[0] in CHEAP]
    assert {argv[0] for argv in argvs} == set(CHEAP)
    for argv, (status, out, err) in zip(argvs, run_cmtnet_commands(argvs, tmp_path)):
        assert status == 0, f'cmtnet {" ".join(argv)}: {err[-3000:]}'
        assert 'cmt_' in out
        if argv[:2] == ['info', '--markdown']:  # the README's table of the models is what the command prints
            rows = [line for line in out.splitlines() if line.startswith('| cmt_')]
            assert len(rows) == 4 and all(row in README.read_text().splitlines() for row in rows), rows


def test_export_command_runs_on_a_small_variant(tmp_path):
    """The README's export line, on CMT-Ti (a stand-in cmt_tiny.pth) instead of CMT-S."""
    argvs = [argv for c in _commands() if (argv := cmtnet_argv(c.tokens)) and argv[0] == 'export']
    assert argvs
    variant, small = argvs[0][1], 'cmt_ti'
    released = {v: f for f, v in RELEASED_FILES.items()}
    swap = {variant: small, released[variant]: released[small]}
    argv = [swap.get(t, t.replace(f'{variant}.', f'{small}.')) for t in argvs[0]]
    write_stand_ins([released[small]], tmp_path)
    result = run_cmtnet(argv, tmp_path)
    assert result.returncode == 0, f'cmtnet {" ".join(argv)}: {result.stderr[-3000:]}'
    output = argv[argv.index('--output') + 1]
    assert (tmp_path / output).stat().st_size > 1e6
