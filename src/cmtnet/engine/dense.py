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
- `add_dense_commands`: `cmtnet <task> train | eval | predict`, from the task's options, its eval and predict
  functions and what it says of itself in --help (`DenseTexts`); training imported when a run starts
  (`task_train`);
- `DenseTask`: the part of a training task both share (loaders, autocast, the CMT's position biases exempt
  from weight decay, unreadable images counted).

What differs stays in each task: COCO data, boxes and AP for detection; masks, overlays and mIoU for
segmentation.
"""
import argparse
import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, List, NamedTuple, Optional, Set, Tuple, Type

import safetensors.torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..checkpoints import PathLike, task_checkpoint_meta
from ..errors import InputError
from ..runtime import Processes, amp_dtype
from .data import eval_loader, train_loader
from .options import RunOptions, add_command, amp_option, config_option, device_option, option, precision_option
from .task import Task

__all__ = ['DenseEvalOptions', 'DenseKind', 'DenseOptions', 'DensePredictOptions', 'DenseTask', 'DenseTexts',
           'DenseTrainOptions', 'add_dense_commands', 'images_option', 'task_train', 'workers_option']

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

    def checkpoint_option(self) -> Any:
        """`--checkpoint` of this task's eval and predict."""
        return option(None, metavar='PATH', required=True, help=f'weights a {self.name} run wrote, e.g. '
                                                                f'runs/{self.command}/model.safetensors')


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
    """What `eval` and `predict` of every dense task take: which weights (each task says whose in
    `checkpoint`'s help, `DenseKind.checkpoint_option`), where and how they run; --help lists the latter after
    the task's own options."""
    listed_last: ClassVar[Tuple[str, ...]] = ('device', 'amp', 'precision', 'config')
    checkpoint: Optional[str] = option(None, metavar='PATH', required=True, help='weights a run wrote')
    device: Optional[str] = device_option()
    amp: str = amp_option(_AMP_HELP)
    precision: str = precision_option()
    config: Optional[str] = config_option()


@dataclass
class DenseEvalOptions(DenseOptions):
    """What `eval` of every dense task takes besides: its val data (each task says which in the help of `data`
    and `strict`, and adds its own files) and the loading processes."""
    listed_last: ClassVar[Tuple[str, ...]] = ('strict', 'workers') + DenseOptions.listed_last
    data: Optional[str] = option(None, metavar='ROOT', group='data', help="the dataset's folder")
    val_images: Optional[str] = images_option('val')
    strict: bool = option(False, group='data', help='stop at an unusable sample instead of skipping it with a warning')
    workers: int = workers_option()


@dataclass
class DensePredictOptions(DenseOptions):
    """What `predict` of every dense task takes besides: image files and folders, and the JSON switch."""
    listed_last: ClassVar[Tuple[str, ...]] = ('json',) + DenseOptions.listed_last
    inputs: List[str] = option(default_factory=list, positional=True, metavar='IMAGE_OR_FOLDER',
                               help='image files and folders of images')
    json: bool = option(False, help='print a JSON object per image (the answer of cmtnet serve) instead of text')


class DenseTexts(NamedTuple):
    """What `cmtnet <task>` and its subcommands say of themselves in --help: each a (help, description) pair,
    and `data`, the data the task reads (in the title of the data flags' section)."""
    command: Tuple[str, str]
    data: str
    train: Tuple[str, str]
    eval: Tuple[str, str]
    predict: Tuple[str, str]


def task_train(package: str) -> Callable[[Any], Any]:
    """`train(options)` of the task package `package` (its `task` module), imported when a run starts, so that
    the task's commands load without the engine's trainer."""
    def train(options: Any) -> Any:
        return importlib.import_module('.task', package).train(options)
    return train


def add_dense_commands(subparsers: argparse._SubParsersAction, kind: DenseKind, package: str, texts: DenseTexts,
                       options: Tuple[Type, Type, Type], eval: Callable[[Any], Any],
                       predict: Callable[[Any], Any]) -> None:
    """Add `cmtnet <kind.command>` with its `train`, `eval` and `predict` subcommands, which take the `options`
    (in that order): `train` runs the task package `package`'s training (`task_train`), `eval` and `predict`
    the functions given."""
    parser = subparsers.add_parser(kind.command, help=texts.command[0], description=texts.command[1])
    commands = parser.add_subparsers(dest=f'{kind.command}_command', metavar='COMMAND', required=True)
    groups = {'data': f'data ({texts.data}; default: the embedded set)'}
    train_help, train_description = texts.train
    train_description += (' Every option can also be set in a YAML file (--config); the command line wins. Several '
                          f'processes: torchrun --nproc_per_node N -m cmtnet {kind.command} train ...')
    for name, command_options, run, (help, description), command_groups in (
            ('train', options[0], task_train(package), (train_help, train_description), dict(groups, model='model')),
            ('eval', options[1], eval, texts.eval, groups),
            ('predict', options[2], predict, texts.predict, None)):
        add_command(commands, name, command_options, run, groups=command_groups, help=help, description=description)


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
