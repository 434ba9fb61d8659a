"""The fenced code blocks of the project's Markdown files and the commands in them, for the tests that
check that the README and docs/ run as written (test_readme.py, test_docs_commands.py).

A block that cannot run in the tests is marked in the Markdown source by an HTML comment on the line
just before its fence, with the reason: `<!-- readme-test: skip (needs CUDA) -->`.
"""
import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch

from released import make_state, released_keys

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r'^```\s*([\w+-]*)\s*$')
_MARK = re.compile(r'^<!--\s*readme-test:\s*skip\s*\((.+)\)\s*-->$')
_HEREDOC = re.compile(r"<<-?\s*'?(\w+)'?")
_LISTS = {'|', '||', '&&', ';', '&'}
_OPERATORS = {'>', '>>', '<', '2>', '<<', '>&', '2>&1'}
# the released checkpoint files, by variant
RELEASED_FILES = {'cmt_tiny.pth': 'cmt_ti', 'cmt_xs.pth': 'cmt_xs', 'cmt_small.pth': 'cmt_s', 'cmt_base.pth': 'cmt_b'}


@dataclass
class Block:
    path: Path
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    skip: Optional[str]  # the reason of a skip mark before it

    @property
    def where(self) -> str:
        return f'{self.path.relative_to(ROOT)}:{self.line}'


@dataclass
class Command:
    """One shell command of a bash block (continuation lines joined), as tokens without the comment."""
    block: Block
    line: int
    text: str
    tokens: List[str]

    @property
    def where(self) -> str:
        return f'{self.block.path.relative_to(ROOT)}:{self.line}'


def blocks(path: Path) -> List[Block]:
    """Every fenced code block of a Markdown file, in order."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith('```'))
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), '')
        mark = _MARK.match(before)
        found.append(Block(path, m[1], '\n'.join(lines[start + 1:end]) + '\n', start + 1, mark[1] if mark else None))
        i = end + 1
    return found


def commands(block: Block) -> Tuple[List[Command], List[Tuple[int, str]]]:
    """The commands of a bash block, and the bodies of its here-documents (line, text)."""
    lines = block.code.splitlines()
    cmds, heredocs, i = [], [], 0
    while i < len(lines):
        first = i
        text = lines[i]
        while text.rstrip().endswith('\\') and i + 1 < len(lines):
            i += 1
            text = text.rstrip()[:-1] + ' ' + lines[i].strip()
        i += 1
        if not text.strip() or text.lstrip().startswith('#'):
            continue
        doc = _HEREDOC.search(text)
        if doc:  # `python - <<'EOF'`: the body up to the delimiter is a script, not commands
            end = next(j for j in range(i, len(lines)) if lines[j].strip() == doc[1])
            heredocs.append((block.line + 1 + i, '\n'.join(lines[i:end]) + '\n'))
            text, i = text[:doc.start()], end + 1
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens, part = list(lexer), []
        for token in [*tokens, ';']:  # `a && b | c; d`: each command of the list on its own
            if token in _LISTS:
                if part:
                    cmds.append(Command(block, block.line + 1 + first, text, part))
                part = []
            else:
                part.append(token)
    return cmds, heredocs


def simple_command(tokens: Sequence[str]) -> List[str]:
    """The tokens of the first simple command: leading VAR=value assignments and redirections cut off."""
    tokens = list(tokens)
    while tokens and re.fullmatch(r'[A-Za-z_]\w*=\S*', tokens[0]):
        tokens.pop(0)
    cut = next((k for k, t in enumerate(tokens) if t in _OPERATORS), len(tokens))
    return tokens[:cut]


def cmtnet_argv(tokens: Sequence[str]) -> Optional[List[str]]:
    """The arguments to `cmtnet` of `cmtnet ...`, `python -m cmtnet ...` or `torchrun ... -m cmtnet ...`."""
    tokens = simple_command(tokens)
    if not tokens:
        return None
    program = Path(tokens[0]).name
    if program == 'cmtnet':
        return tokens[1:]
    if program in ('torchrun', 'python', 'python3'):
        for k in range(1, len(tokens) - 1):
            if tokens[k] == '-m' and tokens[k + 1] == 'cmtnet':
                return tokens[k + 2:]
    return None


def script_argv(tokens: Sequence[str]) -> Optional[Tuple[str, List[str]]]:
    """(script, arguments) of `python benchmarks/x.py ...`."""
    tokens = simple_command(tokens)
    if len(tokens) >= 2 and Path(tokens[0]).name.startswith('python') and tokens[1].endswith('.py'):
        return tokens[1], tokens[2:]
    return None


def make_targets(tokens: Sequence[str]) -> Optional[List[str]]:
    tokens = simple_command(tokens)
    if tokens and tokens[0] == 'make':
        return [t for t in tokens[1:] if not t.startswith('-') and '=' not in t]
    return None


def makefile_targets() -> Set[str]:
    text = (ROOT / 'Makefile').read_text()
    return {m[1] for m in re.finditer(r'^([A-Za-z0-9_.-]+)\s*:(?!=)', text, re.M)}


def _parse(argv: Sequence[str]) -> Tuple[int, str, str]:
    """(exit status, stdout, stderr) of the real `cmtnet` parser on `argv`; 0 when it parses."""
    from cmtnet.cli import build_parser
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(list(argv))
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def _help_flags(subcommand: Sequence[str]) -> Set[str]:
    status, out, err = _parse([*subcommand, '--help'])
    assert status == 0, f'cmtnet {" ".join(subcommand)} --help failed: {err}'
    return set(re.findall(r'(?<![\w-])--[a-z0-9][a-z0-9-]*', out))


def check_cmtnet_argv(argv: Sequence[str]) -> Optional[str]:
    """Why the real parser refuses `cmtnet argv` (a missing subcommand or flag, a value of the wrong type,
    a flag argparse only takes as an abbreviation), or None."""
    status, _, err = _parse(argv)
    if status:
        return err.strip().splitlines()[-1] if err.strip() else f'exit status {status}'
    words = []
    for token in argv[:2]:
        if token.startswith('-'):
            break
        words.append(token)
    # the deepest subcommand whose help parses (`detect train`, then `detect`)
    for depth in range(len(words), 0, -1):
        if _parse([*words[:depth], '--help'])[0] == 0:
            flags = _help_flags(words[:depth])
            break
    else:
        return f'no subcommand in {argv}'
    unknown = [t.split('=')[0] for t in argv if t.startswith('--') and t.split('=')[0] not in flags]
    return f'not a flag of `cmtnet {" ".join(words[:depth])}` (only an abbreviation?): {unknown}' if unknown else None


def write_stand_ins(names: Sequence[str], folder: Path) -> None:
    """A checkpoint in the authors' released format (weights from a seed) for each released file named."""
    for name in names:
        torch.save({'model': make_state(released_keys(RELEASED_FILES[name]), seed=0)}, folder / name)


def released_files(text: str) -> List[str]:
    return sorted({m[0] for m in re.finditer(r'\bcmt_(?:tiny|xs|small|base)\.pth\b', text)})


def run_cmtnet(argv: Sequence[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'cmtnet', *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


# runs each command line of argv[1] (JSON) in turn in this one interpreter, which pays the start-up once, and
# prints [[exit status, stdout, stderr], ...]
_COMMANDS = """
import contextlib, io, json, sys
from cmtnet.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else 1
    results.append([status, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_cmtnet_commands(argvs: Sequence[Sequence[str]], cwd: Path,
                        timeout: float = 240) -> List[Tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each `cmtnet` command line of `argvs`, run in turn in one fresh
    interpreter (as `cmtnet.cli.main`, which the `cmtnet` script calls)."""
    result = subprocess.run([sys.executable, '-c', _COMMANDS, json.dumps([list(a) for a in argvs])], cwd=cwd,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return [tuple(r) for r in json.loads(result.stdout.strip().splitlines()[-1])]


def import_lines(script: str) -> str:
    """The top-level import statements of a script, to check that what it imports still exists."""
    return '\n'.join(line for line in script.splitlines() if re.match(r'(import|from)\s+\S+', line))


def by_file(items: Sequence[Command]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for c in items:
        key = str(c.block.path.relative_to(ROOT))
        counts[key] = counts.get(key, 0) + 1
    return counts
