"""The paper's ablation study, small and repeatable: `cmtnet ablate`.

Each step of models/ablation.py (a 4-stage Transformer, + CMT stem, + LPU, + IRFFN, the all-BatchNorm
swap, no position bias) is trained for the same short fixed budget, with the same recipe, for several
seeds, through the classification task (`cmtnet.classification.train`), and reported as mean and spread of
validation top-1, with params and MACs, and whether training diverged (a NaN or infinite loss).

The default study is the one a CPU can run in minutes: the steps on CMT-Ti, 32x32 inputs, the embedded
handwritten digits, 2 epochs, 3 seeds. It is no reproduction of the paper's ImageNet numbers: the digits are
easy (the differences between steps may be within the seeds' spread), and a two-epoch budget favours
whatever learns fastest rather than best. At 32 px, moreover, every stage shrinks its keys and values to a
single token (its grid side over k is the input side over 32), so attention is a learned global pooling and
the position bias changes nothing: there the no-position-bias row shows the seeds' spread alone, and
`--img-size 64` or more gives attention something to attend over. `--data` trains on an ImageFolder tree.
"""
import contextlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm

from ..classification.options import TrainOptions
from ..classification.train import train
from ..engine.options import command_parser, option
from ..engine.trainer import TrainingDiverged
from ..errors import InputError
from ..models.ablation import ABLATION_STEPS, ablation_model_name
from ..models.variants import VARIANT_ARGS, check_img_size
from .macs import count_macs, count_params
from .tables import Column, dump_json, format_table, millions
from .plots import new_figure, save_figure

__all__ = ['AblateCommandOptions', 'AblationOptions', 'StepResult', 'run_ablation', 'step_train_options', 'plot_ablation', 'add_parser']

STEP_LABELS: Dict[str, str] = {
    '4stage': '4-stage Transformer (patch embedding, plain FFN)',
    'stem': '+ CMT stem',
    'lpu': '+ LPU',
    'irffn': '+ IRFFN (= CMT)',
    'all_bn': 'CMT, every LayerNorm -> BatchNorm',
    'no_pos_bias': 'CMT without position bias',
}

_SHORT_LABELS = {
    '4stage': '4-stage\nTransformer', 'stem': '+ CMT stem', 'lpu': '+ LPU', 'irffn': '+ IRFFN\n(= CMT)',
    'all_bn': 'CMT,\nall BatchNorm', 'no_pos_bias': 'CMT, no\nposition bias',
}


@dataclass
class AblationOptions:
    """What `cmtnet ablate` trains: which steps of which base, for how long, on what, with which seeds."""
    base: str = option('cmt_ti', choices=list(VARIANT_ARGS),
                       help='variant whose shape every step keeps (the paper: cmt_s)')
    steps: List[str] = option(default_factory=lambda: list(ABLATION_STEPS), flags=('--step',), repeat=True,
                              choices=list(ABLATION_STEPS), help='step to run (repeatable)')
    seeds: List[int] = option(default_factory=lambda: [0, 1, 2], help='seeds')
    epochs: int = option(2, help='epochs per run')
    img_size: int = option(32, help='input side')
    batch_size: int = option(32, help='batch size')
    lr: float = option(2e-3, help='peak learning rate')
    data: Optional[str] = option(None, help='ImageFolder root with train/ and val/', unset='the digits')
    output: str = option('runs/ablate', help='folder of the runs')
    workers: int = option(0, help='data loading processes')
    device: Optional[str] = option(None, help='device', unset='CUDA if available, else CPU')
    train: bool = option(True, flags=('--no-train',), help='only the params and MACs of each step')

    def check(self) -> None:
        """Refuse bad options before any work starts, naming the bad value."""
        if self.base not in VARIANT_ARGS:
            raise InputError(f'unknown base {self.base!r}; expected one of {", ".join(VARIANT_ARGS)}')
        unknown = [s for s in self.steps if s not in ABLATION_STEPS]
        if unknown or not self.steps:
            raise InputError(
                f'unknown ablation steps {unknown or self.steps}; expected some of {", ".join(ABLATION_STEPS)}')
        check_img_size(self.img_size, '--img-size')
        for name in ('epochs', 'batch_size'):
            if getattr(self, name) < 1:
                raise InputError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(self, name)}')
        if self.train and not self.seeds:
            raise InputError('--seeds needs at least one seed')


@dataclass
class StepResult:
    """One ablation step: its model's size and cost, and the accuracy of each seed's run."""
    step: str
    label: str
    model: str
    params: int
    macs: int
    img_size_px: int
    seeds: List[int] = field(default_factory=list)
    val_top1_percent: List[float] = field(default_factory=list)  # per seed; NaN where training diverged
    final_train_loss: List[float] = field(default_factory=list)
    diverged: List[bool] = field(default_factory=list)
    train_seconds: float = 0.

    @property
    def finished(self) -> List[float]:
        return [a for a, d in zip(self.val_top1_percent, self.diverged) if not d]

    def summary(self) -> Dict[str, Any]:
        """The result as a dict with the mean, standard deviation (n - 1) and range of finished seeds."""
        done = self.finished
        return dict(
            vars(self),
            val_top1_mean_percent=statistics.fmean(done) if done else math.nan,
            val_top1_std_percent=statistics.stdev(done) if len(done) > 1 else math.nan,
            val_top1_min_percent=min(done) if done else math.nan,
            val_top1_max_percent=max(done) if done else math.nan,
            diverged_runs=sum(self.diverged),
        )


def step_train_options(options: AblationOptions, step: str, seed: int) -> TrainOptions:
    """The training run of one step and seed: the demo's short CPU recipe (configs/demo.yaml) without EMA,
    so that every step trains identically and only the model differs."""
    return TrainOptions(
        model=ablation_model_name(options.base, step), data=options.data, img_size=options.img_size,
        epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, warmup_lr=1e-4, min_lr=1e-5,
        warmup_epochs=min(1., options.epochs / 4), cooldown_epochs=0, weight_decay=0.05, drop_path=0., seed=seed,
        aa='none', color_jitter=0., scale=[0.7, 1.0], ratio=[0.85, 1.18], hflip=0., reprob=0., mixup=0.,
        cutmix=0., smoothing=0.1, aug_repeats=0, crop_pct=1.0, workers=options.workers, device=options.device,
        output=str(Path(options.output) / step / f'seed{seed}'), progress=False,
    )


def _size(options: AblationOptions, step: str) -> StepResult:
    name = ablation_model_name(options.base, step)
    model = timm.create_model(name, img_size=options.img_size)  # with ImageNet's 1000 classes, as in the paper
    return StepResult(step=step, label=STEP_LABELS[step], model=name, params=count_params(model),
                      macs=count_macs(model, options.img_size), img_size_px=options.img_size)


def run_ablation(
        options: AblationOptions,
        train_fn: Optional[Callable[[TrainOptions], Dict[str, Any]]] = None,
        log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> List[StepResult]:
    """Size every step's model and, if `options.train`, train it once per seed with `train_fn` (default: the
    classification task's `train`).

    A run that stops with `TrainingDiverged` counts as diverged (its accuracy NaN); other errors propagate.
    Params and MACs are those of the model at the trained input size with a 1000-class head, as in the paper.
    """
    options.check()
    train_fn = train_fn or train
    results = [_size(options, step) for step in options.steps]
    if not options.train:
        return results
    for result in results:
        start = time.perf_counter()
        for seed in options.seeds:
            try:
                metrics = train_fn(step_train_options(options, result.step, seed))
                top1, loss, diverged = float(metrics['val_top1']), float(metrics['train_loss']), False
            except TrainingDiverged as e:
                top1, loss, diverged = math.nan, math.nan, True
                log(f'{result.model} seed {seed}: diverged ({e})')
            result.seeds.append(seed)
            result.val_top1_percent.append(top1)
            result.final_train_loss.append(loss)
            result.diverged.append(diverged)
            log(f'{result.model} seed {seed}: val top-1 {top1:.2f}%')
        result.train_seconds = time.perf_counter() - start
    return results


def _mean_std(row: Dict[str, Any]) -> str:
    if math.isnan(row['val_top1_mean_percent']):
        return '-'
    std = row['val_top1_std_percent']
    return f'{row["val_top1_mean_percent"]:.2f}' + ('' if math.isnan(std) else f' ± {std:.2f}')


_COLUMNS = (
    Column('step', lambda r: r['label'], right=False),
    Column('model', lambda r: r['model'], right=False),
    Column('params (M)', lambda r: millions(r['params'])),
    Column('MMACs', lambda r: f'{r["macs"] / 1e6:,.1f}'),
)
_TRAIN_COLUMNS = (
    Column('top-1 % mean ± std', _mean_std),
    Column('min..max', lambda r: '-' if math.isnan(r['val_top1_min_percent'])
           else f'{r["val_top1_min_percent"]:.2f}..{r["val_top1_max_percent"]:.2f}'),
    Column('diverged', lambda r: f'{r["diverged_runs"]}/{len(r["seeds"])}'),
    Column('train s', lambda r: f'{r["train_seconds"]:.0f}'),
)


def plot_ablation(rows: Sequence[Dict[str, Any]], path: str) -> None:
    """Mean top-1 per step with one standard deviation either side, each seed a dot, diverged runs named."""

    fig, ax = new_figure((7.5, 4))
    for i, row in enumerate(rows):
        mean, std = row['val_top1_mean_percent'], row['val_top1_std_percent']
        done = [a for a, d in zip(row['val_top1_percent'], row['diverged']) if not d]
        ax.plot([i + 0.12] * len(done), done, '.', color='gray', markersize=6)
        if not math.isnan(mean):
            ax.errorbar(i, mean, yerr=0 if math.isnan(std) else std, fmt='o', color='tab:blue', capsize=5)
        if row['diverged_runs']:
            ax.annotate(f'{row["diverged_runs"]} of {len(row["seeds"])} diverged', (i, 0.02), ha='center',
                        xycoords=('data', 'axes fraction'), color='tab:red', fontsize=8)
    ax.set_xticks(range(len(rows)), [_SHORT_LABELS[r['step']] for r in rows], fontsize=8)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylabel('validation top-1 (%)')
    ax.set_title('Ablation steps: mean and standard deviation over seeds (gray: each seed)', fontsize=10)
    ax.grid(True, axis='y', alpha=0.3)
    save_figure(fig, path)


def _null_as_nan(value: Any) -> Any:
    if isinstance(value, list):
        return [_null_as_nan(v) for v in value]
    return math.nan if value is None else value


def _load_results(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            saved = json.load(f)
        for row in saved['steps']:  # JSON keeps a figure that does not exist (NaN) as null
            row.update({k: _null_as_nan(v) for k, v in row.items()})
        return saved
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f'--results {path}: not the JSON output of `cmtnet ablate --json` ({e})') from e


@dataclass
class AblateCommandOptions(AblationOptions):
    """`cmtnet ablate`: the study's options, and how its results are shown (or which saved ones)."""
    json: bool = option(False, flags=('--json',), help='print the results as JSON (unrounded numbers)')
    markdown: bool = option(False, flags=('--markdown',), help='print a GitHub markdown table')
    plot: Optional[str] = option(None, metavar='PATH', help='save a PNG of top-1 per step')
    results: Optional[str] = option(None, metavar='JSON', help='show the results saved from an earlier run\'s '
                                                               '--json output instead of training')


def _run_ablate(command: AblateCommandOptions) -> int:
    options = AblationOptions(**{f.name: getattr(command, f.name) for f in fields(AblationOptions)})
    if command.results:  # the table and plot of an earlier `--json` output, without training again
        saved = _load_results(command.results)
        options, rows, total = AblationOptions(**saved['options']), saved['steps'], saved['total_seconds']
    else:
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the runs' logs; stdout is for the table (or the JSON)
            rows = [r.summary() for r in run_ablation(options)]
        total = time.perf_counter() - start
    if command.plot and options.train:
        plot_ablation(rows, command.plot)
    if command.json:
        print(dump_json(dict(options=vars(options), total_seconds=total, steps=rows)))
        return 0
    trained = (f'; trained on {options.data or "the embedded digits"}, {options.epochs} epoch(s) per run at peak '
               f'lr {options.lr:g}, seeds {options.seeds}, validation top-1 of the last epoch' if options.train else '')
    print(f'Ablation steps on {options.base} at {options.img_size}px: params and MACs (fvcore) at that size with '
          f'a 1000-class head, as in the paper{trained}.')
    print()
    print(format_table(_COLUMNS + (_TRAIN_COLUMNS if options.train else ()), rows, markdown=command.markdown))
    print(f'\ntotal {total:.0f} s')
    return 0


add_parser = command_parser(
    'ablate', AblateCommandOptions, _run_ablate,
    help='train the paper\'s ablation steps for a short fixed budget, several seeds',
    description='The CMT paper\'s ablation steps (4-stage Transformer, + CMT stem, + LPU, + IRFFN; every '
                'LayerNorm a BatchNorm; no position bias), each trained for the same short budget with '
                'several seeds: params, MACs, mean and spread of validation top-1, divergence.')
