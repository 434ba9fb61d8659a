"""`cmtnet bench`'s steps from two checkouts of cmtnet timed in turns in one run: a change's speed before and after.

Each checkout's package runs in a process of its own (its `src` first on the path), which builds the steps
`cmtnet bench` builds there (`cmtnet.analysis.speed.build_step`: the model, path, precision and batch alike),
runs their warm-up steps (compiling happens there), and then runs one step whenever this process asks. This
process asks for each step of one checkout and then of the other, step after step, round after round (the
order reversed every other round), so that a change in machine load falls on both alike; the table gives the
median ms per batch and the speed ratio after/before; with `--timing-lock FILE` the timing alone holds an exclusive lock on FILE (the
building and compiling run unlocked). `--plain-compiled` adds, in the checkout after, the folded model compiled without
the CPU fast path (`reparameterize_model` alone, channels_last, inductor with freezing at static shapes).

    git archive 8150c42 src | tar -x -C /tmp/before      # the package as it was at a commit
    python benchmarks/bench_checkouts.py /tmp/before/src src --threads 2 --plain-compiled
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median
from typing import IO, Any, Callable, Dict, List, Optional, Sequence

CHECKOUTS = ('before', 'after')
PLAIN = 'fused_compiled_plain'  # the step `--plain-compiled` adds


def _plain_compiled_step(speed: Any, name: str, precision: str, batch_size: int) -> Callable[[], object]:
    """The folded model (no CPU fast path) compiled as `cmtnet bench`'s fused_compiled path compiles it."""
    import torch
    import torch._inductor.config

    size = speed.img_size_of(name)
    model = speed.build_model(name, 'fused').to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    if precision == 'bf16':
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    compiled = torch.compile(model, dynamic=False)

    def step() -> object:
        with torch._inductor.config.patch(freezing=True), torch.inference_mode():
            return compiled(x)
    return step


def worker(args: argparse.Namespace) -> None:
    """A checkout's process: build and warm up its steps, say which and how long the warm-up took, then
    answer each step name read on stdin with the seconds one step took ('peaks': the practical peaks and the
    machine, load average included)."""
    answers = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)  # whatever the library prints goes to stderr, not into the answers
    sys.path.insert(0, str(Path(args.worker).resolve()))
    import tempfile
    import time

    import torch

    import cmtnet
    from cmtnet.analysis import speed

    speed.roomy_primitive_cache()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    torch.manual_seed(0)
    steps: Dict[str, Callable[[], object]] = {}
    warmup: Dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for path in args.paths + ([PLAIN] if args.plain_compiled else []):
            for precision in args.precision:
                key = f'{path}:{precision}'
                steps[key] = (_plain_compiled_step(speed, args.model, precision, args.batch_size) if path == PLAIN
                              else speed.build_step(args.model, path, precision, args.batch_size,
                                                    torch.device('cpu'), workdir, args.threads))
                start = time.perf_counter()
                for _ in range(args.warmup):
                    steps[key]()
                warmup[key] = time.perf_counter() - start
        print(json.dumps(dict(package=cmtnet.__file__, warmup=warmup)), file=answers)
        for line in sys.stdin:
            key = line.strip()
            if key == 'peaks':
                peaks = {p: speed.practical_peak_gflops(torch.device('cpu'), getattr(torch, d))
                         for p, d in (('fp32', 'float32'), ('bf16', 'bfloat16'))}
                print(json.dumps(dict(peaks, machine=speed.machine(args.threads))), file=answers)
            else:
                start = time.perf_counter()
                steps[key]()
                print(time.perf_counter() - start, file=answers)


def _ask(process: subprocess.Popen, question: str) -> Any:
    stdin, stdout = process.stdin, process.stdout
    assert stdin is not None and stdout is not None
    stdin.write(question + '\n')
    stdin.flush()
    return _answer(stdout)


def _answer(stdout: IO[str]) -> Any:
    line = stdout.readline()
    if not line:
        raise SystemExit('a checkout process ended early (its error is above)')
    return json.loads(line)


def _ms(value: Optional[float]) -> str:
    return f'{value:.0f}' if value else ''


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('before', help="the checkout before: its package's folder (a `src`)")
    parser.add_argument('after', help="the checkout after: its package's folder (a `src`)")
    parser.add_argument('--model', default='cmt_s', help="a CMT variant, at its native size (default cmt_s)")
    parser.add_argument('--paths', nargs='+', default=['fused_cl', 'fused_compiled'],
                        help='paths of cmtnet bench (default fused_cl fused_compiled)')
    parser.add_argument('--precision', nargs='+', choices=['fp32', 'bf16'], default=['fp32', 'bf16'])
    parser.add_argument('--plain-compiled', action='store_true',
                        help='also the plain fold compiled, without the CPU fast path, in the checkout after')
    parser.add_argument('--batch-size', type=int, default=16, help="images per step (default 16, as cmtnet bench's)")
    parser.add_argument('--threads', type=int, default=0, help='intra-op threads (0: as they are)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps first (compiling happens there)')
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--timing-lock', metavar='FILE', help='hold an exclusive lock on FILE while timing')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return []
    from timing import locked  # here: it imports cmtnet, which a checkout's process takes from its own `src`
    shared = ['--model', args.model, '--paths', *args.paths, '--precision', *args.precision,
              '--batch-size', str(args.batch_size), '--threads', str(args.threads), '--warmup', str(args.warmup)]
    processes = {
        checkout: subprocess.Popen(
            [sys.executable, __file__, source, source, *shared, '--worker', source]
            + (['--plain-compiled'] if checkout == 'after' and args.plain_compiled else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for checkout, source in zip(CHECKOUTS, (args.before, args.after))}
    try:
        ready = {checkout: _answer(p.stdout) for checkout, p in processes.items()}  # both built in parallel
        turns = [(c, key) for key in ready['after']['warmup'] for c in CHECKOUTS if key in ready[c]['warmup']]
        times: Dict[tuple, List[float]] = {turn: [] for turn in turns}
        with locked(args.timing_lock):
            peaks = _ask(processes['after'], 'peaks')
            for round_ in range(args.rounds):
                for checkout, key in turns if round_ % 2 == 0 else reversed(turns):
                    times[(checkout, key)].append(_ask(processes[checkout], key))
    finally:
        for p in processes.values():
            if p.stdin:
                p.stdin.close()
            p.wait()
    ms = {turn: 1e3 * median(t) for turn, t in times.items() if t}
    print(f'{args.model}, batch {args.batch_size} at its native size; {peaks["machine"]}; practical peak '
          f'fp32 {peaks["fp32"]:.0f}, bf16 {peaks["bf16"]:.0f} GFLOP/s; {args.warmup} warm-up + {args.rounds} '
          'interleaved rounds, median')
    for checkout in CHECKOUTS:
        print(f'{checkout}: {ready[checkout]["package"]}')
    print('| path | precision | before (ms) | after (ms) | after/before speed | warm-up before, after (s) |')
    print('|---|---|---:|---:|---:|---:|')
    rows = []
    for key in ready['after']['warmup']:
        path, precision = key.split(':')
        before, after = ms.get(('before', key)), ms.get(('after', key))
        warm = ', '.join(f'{ready[c]["warmup"][key]:.0f}' if key in ready[c]['warmup'] else '-' for c in CHECKOUTS)
        print(f'| {path} | {precision} | {_ms(before)} | {_ms(after)} | '
              f'{f"{before / after:.3f}x" if before and after else ""} | {warm} |')
        rows.append(dict(path=path, precision=precision, before_ms=before, after_ms=after))
    plain = [f'{p} {ms[("after", f"fused_compiled:{p}")] / ms[("after", f"{PLAIN}:{p}")]:.3f}x'
             for p in args.precision if ('after', f'{PLAIN}:{p}') in ms and ('after', f'fused_compiled:{p}') in ms]
    if plain:
        print('after, the plain fold compiled against the fast path compiled (speed): ' + ', '.join(plain))
    return rows


if __name__ == '__main__':
    main()
