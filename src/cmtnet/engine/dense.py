"""The skeleton that detection and segmentation share: one for every dense task, each task adding what differs.

A dense task (`DenseKind`) is named three ways: by the `task` its exported weights carry in their metadata
('detection'), by its command (`cmtnet detect`, runs in runs/detect) and by the metadata entry that names its
head on the CMT ('detector'). From these come:

- `DenseKind.meta(path)` and `DenseKind.load(path, build)`: a weight file a run of the task exported, checked
  to be one, and the model rebuilt from it alone, in eval mode, with the file's weights;
- `DenseTrainOptions`: the engine's options with the defaults both training recipes share;
- `DenseOptions`, `DenseEvalOptions` and `DensePredictOptions`: what `eval` and `predict` of both tasks take
  alike (which weights, the device, autocast, `--precision`, a config file, the val data, the images to
  predict), with the option fields the tasks' training data flags share (`images_option`, `workers_option`);
- `DenseCommands`: `cmtnet <task> train | eval | predict`, from the task's options, its eval and predict
  functions and what it says of itself in --help, in the words of the task's own options; training imported
  when a run starts (`task_train`);
- `DenseTask`: the part of a training task both share (loaders, autocast, the CMT's position biases exempt
  from weight decay, unreadable images counted).

What differs stays in each task: COCO data, boxes and AP for detection; masks, overlays and mIoU for
segmentation.
"""
import argparse
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Set, Tuple, Type

import safetensors.torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..checkpoints import PathLike, task_checkpoint_meta
from ..errors import InputError
from ..runtime import Processes, amp_dtype
from .data import eval_loader, train_loader
from .options import (
    RunOptions, add_command, amp_option, config_option, device_option, option, option_help, parse, precision_option)
from .task import Task

__all__ = ['DenseCommands', 'DenseEvalOptions', 'DenseKind', 'DenseOptions', 'DensePredictOptions', 'DenseTask',
           'DenseTrainOptions', 'images_option', 'task_train', 'workers_option']

_AMP_HELP = 'mixed precision: auto is bf16 on CUDA, off on CPU'


@dataclass(frozen=True)
class DenseKind:
    """A dense task as its files and commands name it; see the module docstring."""
    name: str  # the `task` of its exports' metadata: 'detection'
    command: str  # `cmtnet <command>`, and its runs' folder runs/<command>: 'detect'
    head: str  # the metadata entry that names the head on the CMT: 'detector'

    def meta(self, path: Optional[PathLike]) -> Dict[str, Any]:
        """The metadata of a weight file a run of this task exported (`model.safetensors`, `best.safetensors`,
        ...); InputError if none is given, or the file is not one such a run wrote."""
        return task_checkpoint_meta(path, self.name, f'cmtnet {self.command} train')

    def load(self, path: PathLike, build: Callable[[Dict[str, Any]], nn.Module],
             **overrides: Any) -> Tuple[nn.Module, Dict[str, Any]]:
        """(the model in eval mode, its metadata) from a weight file a run of this task exported: `build(meta)`
        makes the model its weights load into; `overrides` that are not None replace stored entries."""
        meta = dict(self.meta(path), **{k: v for k, v in overrides.items() if v is not None})
        model = build(meta)
        try:
            model.load_state_dict(safetensors.torch.load_file(str(path)))
        except RuntimeError as e:
            raise InputError(f'cannot load {path} into {meta[self.head]} on {meta["model"]}: {e}') from e
        return model.eval(), meta

    @property
    def checkpoint_help(self) -> str:
        """The help of `--checkpoint` of this task's eval and predict."""
        return f'weights a {self.name} run wrote, e.g. runs/{self.command}/model.safetensors'


def images_option(split: str) -> Any:
    """`--train-images` / `--val-images`."""
    return option(None, metavar='DIR', group='data', help=f'folder of the {split} images')


def workers_option() -> Any:
    """`--workers` of a dense task's training and evaluation."""
    return option(2, metavar='N', group='data', help='data loading processes per process')


@dataclass
class DenseTrainOptions(RunOptions):
    """The engine's options with what the dense recipes share: 2 images per process, AdamW, no warm-up counted
    in epochs, a learning rate that ends at 0, 2 data loading processes."""
    batch_size: int = 2
    opt: str = 'adamw'
    warmup_epochs: Optional[float] = 0
    min_lr: float = 0.0
    workers: int = workers_option()


@dataclass
class DenseOptions:
    """What `eval` and `predict` of every dense task take: which weights (--help says whose:
    `DenseKind.checkpoint_help`), where and how they run; --help lists the latter after the task's own
    options."""
    listed_last: ClassVar[Tuple[str, ...]] = ('device', 'amp', 'precision', 'config')
    checkpoint: Optional[str] = option(None, metavar='PATH', required=True, help='weights a run wrote')
    device: Optional[str] = device_option()
    amp: str = amp_option(_AMP_HELP)
    precision: str = precision_option()
    config: Optional[str] = config_option()


@dataclass
class DenseEvalOptions(DenseOptions):
    """What `eval` of every dense task takes besides: its val data (--help says which in the words of the task's
    training options' `data` and `strict`; each task adds its own files) and the loading processes."""
    listed_last: ClassVar[Tuple[str, ...]] = ('strict', 'workers') + DenseOptions.listed_last
    data: Optional[str] = option(None, metavar='ROOT', group='data', help="the dataset's folder")
    val_images: Optional[str] = images_option('val')
    strict: bool = option(False, group='data', help='stop at an unusable sample instead of skipping it with a warning')
    workers: int = workers_option()


@dataclass
class DensePredictOptions(DenseOptions):
    """What `predict` of every dense task takes besides: image files and folders, and the JSON switch."""
    listed_last: ClassVar[Tuple[str, ...]] = ('json',) + DenseOptions.listed_last
    inputs: List[str] = option(default_factory=list, positional=True, metavar='IMAGE_OR_FOLDER', required=True,
                               help='image files and folders of images')
    json: bool = option(False, help='print a JSON object per image (the answer of cmtnet serve) instead of text')


def task_train(package: str) -> Callable[[Any], Any]:
    """`train(options)` of the task package `package` (its `task` module), imported when a run starts, so that
    the task's commands load without the engine's trainer."""
    def train(options: Any) -> Any:
        return importlib.import_module('.task', package).train(options)
    return train


@dataclass(frozen=True)
class DenseCommands:
    """`cmtnet <kind.command>` with its `train`, `eval` and `predict` subcommands, which take the `options` (in
    that order): `train` runs the task package `package`'s training (`task_train`), `eval` and `predict` the
    functions given. `help` and `description` are the task command's, `helps` its subcommands' one-line helps
    (in that order) and `data` the data the task reads (in the title of the data flags' section); each
    subcommand's description is its options class's docstring. Eval and predict speak of the task's data in the
    words of its training options (the help of `data` and `strict`) and of the weights as `kind` does."""
    kind: DenseKind
    package: str
    options: Tuple[Type, Type, Type]
    eval: Callable[[Any], Any]
    predict: Callable[[Any], Any]
    help: str
    description: str
    data: str
    helps: Tuple[str, str, str]

    def add_parser(self, subparsers: argparse._SubParsersAction) -> None:
        """Add the task's command and its three subcommands to `subparsers` (what cli.py calls)."""
        command = self.kind.command
        parser = subparsers.add_parser(command, help=self.help, description=self.description)
        commands = parser.add_subparsers(dest=f'{command}_command', metavar='COMMAND', required=True)
        groups = {'data': f'data ({self.data}; default: the embedded set)'}
        train, evaluate, predict = self.options
        words = {'checkpoint': self.kind.checkpoint_help}
        eval_words = dict(words, **{name: option_help(train, name) for name in ('data', 'strict')})
        train_description = (f'{inspect.cleandoc(train.__doc__)} Every option can also be set in a YAML file '
                             '(--config); the command line wins. Several processes: torchrun --nproc_per_node N '
                             f'-m cmtnet {command} train ...')
        for name, options, run, help, description, command_groups, helps in (
                ('train', train, task_train(self.package), self.helps[0], train_description,
                 dict(groups, model='model'), None),
                ('eval', evaluate, self.eval, self.helps[1], inspect.cleandoc(evaluate.__doc__), groups, eval_words),
                ('predict', predict, self.predict, self.helps[2], inspect.cleandoc(predict.__doc__), None, words)):
            add_command(commands, name, options, run, groups=command_groups, helps=helps, help=help,
                        description=description)

    def parse_options(self, argv: Sequence[str]) -> Any:
        """The options of `cmtnet <task> train ARGV`, with the config file applied."""
        return parse(self.options[0], argv, prog=f'cmtnet {self.kind.command} train')


class DenseTask(Task):
    """What a detection or segmentation training task shares: `setup` reads `train_set` and `val_set` (each
    with `describe()`) and ends with `finish_setup`; batches are (images, targets, skipped)."""
    val_prefix = ''  # metrics.csv columns are the task's own names: bbox_AP, mIoU, ...
    options: Any  # the task's options: batch_size, seed, workers, amp

    def finish_setup(self, processes: Processes, train: Dataset, val: Dataset, val_batch_size: int,
                     collate_fn: Callable, train_collate_fn: Optional[Callable] = None) -> None:
        """Make the loaders of the samples `train` and `val` and the autocast dtype, and print the sets."""
        o = self.options
        p = self.processes = processes
        self.train_loader = train_loader(train, o.batch_size, p.rank, p.world_size, o.seed, workers=o.workers,
                                         collate_fn=train_collate_fn)
        self.val_loader = eval_loader(val, val_batch_size, p.rank, p.world_size, o.workers, collate_fn=collate_fn)
        self.amp = amp_dtype(o.amp, p.device)
        if p.is_main:
            print(self.train_set.describe())
            print(self.val_set.describe())

    def skipped(self, batch: Any) -> int:
        return int(sum(batch[2]))

    def no_weight_decay(self, model: nn.Module) -> Set[str]:
        # the CMT backbone is a features-only copy without CMT.no_weight_decay(): its position biases by name
        return {name for name, _ in model.named_parameters() if name.endswith('rel_pos_bias')}
