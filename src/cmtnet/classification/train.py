"""Training: the released CMT recipe from timm's components, from one CPU to many GPUs (`cmtnet train`).

    cmtnet train --config configs/demo.yaml                                  # the embedded digits, on CPU
    cmtnet train --recipe cmt_s --data /path/imagenet                        # the released recipe
    torchrun --nproc_per_node 8 -m cmtnet train --recipe cmt_s --data /path/imagenet
    cmtnet train --data my_images --model cmt_s --pretrained cmt_small.pth --img-size 384 --epochs 30 ...

Parts, all timm's or torch's: AdamW from timm's optimizer factory (no weight decay on norms, biases and,
unless --wd-pos-bias, the position biases), cosine schedule with warm-up and cool-down, RandAugment,
random erasing, mixup / cutmix, label smoothing, repeated augmentation, drop path, model EMA, gradient
clipping and accumulation, autocast, DistributedDataParallel under torchrun (NCCL on GPUs, gloo on CPU).

The output folder holds `last.pth` (everything --resume needs, written at every epoch end and every
--checkpoint-interval updates), `best.safetensors` (best validation top-1), `ema.safetensors`, the final
`model.safetensors`, `metrics.csv` (a row per epoch), `curves.png` and `config.yaml` (the options, reusable
with --config). Only the first process writes.
"""
import argparse
import csv
import io
import logging
import os
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from timm.data import Mixup
from timm.layers import convert_sync_batchnorm
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, list_optimizers, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, dispatch_clip_grad, distribute_bn, random_seed
from timm.utils.distributed import init_distributed_device_so

from .checkpointing import atomic_write, capture_rng, create_model, export_weights, load_state, restore_rng, save_state
from .cmt import VARIANT_ARGS
from .data import ReadableImages, build_dataset, default_eval_split, eval_loader, eval_transform, train_loader, \
    train_transform
from .evaluate import amp_dtype, autocast, default_device, evaluate
from .options import CommandError, HelpFormatter, InputError, resolve, run_reporting_errors, track_defaults, \
    write_config
from .recipes import RECIPES

__all__ = ['Trainer', 'TrainingDiverged', 'add_parser', 'parse_options', 'train']

_logger = logging.getLogger(__name__)

# metrics.csv columns that measure the machine rather than the model
TIMING_COLUMNS = ('epoch_time', 'img_per_s')


class TrainingDiverged(CommandError):
    """The loss became NaN or infinite."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `train` subcommand."""
    parser = subparsers.add_parser(
        'train', help='train or fine-tune a CMT model (the released recipe, one CPU to many GPUs)',
        formatter_class=HelpFormatter,
        description='Train a CMT model on an ImageFolder tree (train/ and val/, a folder per class) or, '
                    'without --data, on the embedded handwritten digits; fine-tune with --pretrained. Every '
                    'option can also be set in a YAML file (--config); --recipe presets the released ImageNet '
                    'recipe of a variant. Precedence: default < recipe < config file < command line. '
                    'Several processes: torchrun --nproc_per_node N -m cmtnet train ...',
        epilog='The learning rate is --lr, or else --lr-base x global batch / --lr-base-size, with the global '
               'batch = --batch-size x processes x --accum-steps.')
    g = parser.add_argument_group('data')
    g.add_argument('--data', metavar='DIR',
                   help='ImageFolder root holding train/ and val/ (one folder per class); '
                        'default: the embedded handwritten digits')
    g.add_argument('--train-split', default='train', metavar='NAME', help='training folder under --data')
    g.add_argument('--val-split', metavar='NAME', help='validation folder under --data (default: val; test for the digits)')
    g.add_argument('--img-size', type=int, metavar='N', help='input side, a multiple of 32 (default: the model\'s native size)')
    g.add_argument('--workers', type=int, default=4, metavar='N', help='data loading processes per training process')
    g.add_argument('--strict', action=argparse.BooleanOptionalAction, default=False,
                   help='stop at an unreadable image instead of skipping it with a warning')
    g = parser.add_argument_group('model')
    g.add_argument('--recipe', choices=list(RECIPES), help='preset: the released ImageNet recipe of a variant')
    g.add_argument('--model', choices=list(VARIANT_ARGS), default='cmt_ti', help='CMT variant')
    g.add_argument('--pretrained', metavar='PATH',
                   help='start from these weights (a released checkpoint or ours); with other classes the '
                        'classifier is reset, with another --img-size the position biases are resized')
    g.add_argument('--num-classes', type=int, metavar='N', help='classes (default: those of the data; must match them)')
    g.add_argument('--drop', type=float, metavar='P', help='dropout before the classifier (default: the variant\'s)')
    g.add_argument('--drop-path', type=float, default=0.1, metavar='P', help='stochastic depth rate')
    g.add_argument('--sync-bn', action=argparse.BooleanOptionalAction, default=False,
                   help='synchronise BatchNorm statistics over processes (CUDA)')
    g = parser.add_argument_group('optimisation')
    g.add_argument('--epochs', type=int, default=300, metavar='N',
                   help='epochs of the cosine schedule (warm-up included); --cooldown-epochs follow')
    g.add_argument('--batch-size', type=int, default=128, metavar='N', help='images per process and step')
    g.add_argument('--accum-steps', type=int, default=1, metavar='N', help='batches accumulated per update')
    g.add_argument('--lr', type=float, metavar='LR', help='learning rate (default: scaled from --lr-base)')
    g.add_argument('--lr-base', type=float, default=5e-4, metavar='LR', help='learning rate at a global batch of --lr-base-size')
    g.add_argument('--lr-base-size', type=int, default=512, metavar='N', help='global batch of --lr-base')
    g.add_argument('--opt', default='adamw', help='optimizer, by timm name')
    g.add_argument('--weight-decay', type=float, default=0.05, metavar='WD', help='weight decay (never on norms and biases)')
    g.add_argument('--wd-pos-bias', action=argparse.BooleanOptionalAction, default=False,
                   help='apply weight decay to the attention position biases too')
    g.add_argument('--clip-grad', type=float, metavar='NORM', help='clip gradients to this norm (or value)')
    g.add_argument('--clip-mode', choices=['norm', 'value', 'agc'], default='norm', help='gradient clipping mode')
    g.add_argument('--warmup-epochs', type=float, default=20, metavar='N', help='epochs of linear warm-up')
    g.add_argument('--warmup-lr', type=float, default=1e-6, metavar='LR', help='learning rate at the start of warm-up')
    g.add_argument('--min-lr', type=float, default=1e-5, metavar='LR', help='learning rate at the end of the cosine')
    g.add_argument('--cooldown-epochs', type=int, default=10, metavar='N', help='epochs at --min-lr after the cosine')
    g.add_argument('--step-on-epochs', action=argparse.BooleanOptionalAction, default=False,
                   help='change the learning rate once per epoch (as the released code) instead of every update')
    g = parser.add_argument_group('augmentation and regularisation')
    g.add_argument('--aa', default='rand-m9-mstd0.5-inc1', metavar='POLICY', help="timm auto-augment policy, or 'none'")
    g.add_argument('--color-jitter', type=float, default=0.4, metavar='F', help='colour jitter (when --aa is none)')
    g.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0], metavar=('MIN', 'MAX'),
                   help='random-resized-crop area range')
    g.add_argument('--ratio', type=float, nargs=2, default=[3 / 4, 4 / 3], metavar=('MIN', 'MAX'),
                   help='random-resized-crop aspect range')
    g.add_argument('--hflip', type=float, default=0.5, metavar='P', help='horizontal flip probability')
    g.add_argument('--reprob', type=float, default=0.25, metavar='P', help='random erasing probability')
    g.add_argument('--mixup', type=float, default=0.8, metavar='ALPHA', help='mixup alpha (0: off)')
    g.add_argument('--cutmix', type=float, default=1.0, metavar='ALPHA', help='cutmix alpha (0: off)')
    g.add_argument('--smoothing', type=float, default=0.1, metavar='F', help='label smoothing')
    g.add_argument('--aug-repeats', type=int, default=3, metavar='N', help='repeated augmentation (0 or 1: off)')
    g.add_argument('--model-ema', action=argparse.BooleanOptionalAction, default=False,
                   help='keep an exponential moving average of the weights')
    g.add_argument('--model-ema-decay', type=float, default=0.99996, metavar='D', help='EMA decay per update')
    g.add_argument('--interpolation', choices=['bicubic', 'bilinear'], default='bicubic', help='resize interpolation')
    g.add_argument('--crop-pct', type=float, default=0.875, metavar='F', help='evaluation centre-crop fraction')
    g = parser.add_argument_group('speed')
    g.add_argument('--device', help='torch device (default: cuda if available, else cpu)')
    g.add_argument('--amp', choices=['auto', 'none', 'bf16', 'fp16'], default='auto',
                   help='mixed precision: auto is bf16 on CUDA and off on CPU; fp16 (loss-scaled) is CUDA only')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=False,
                   help='channels-last memory format')
    g.add_argument('--compile', action=argparse.BooleanOptionalAction, default=False, help='torch.compile the model')
    g = parser.add_argument_group('run')
    g.add_argument('--output', default='runs/train', metavar='DIR', help='folder for checkpoints, metrics and plots')
    g.add_argument('--resume', action=argparse.BooleanOptionalAction, default=False,
                   help='continue the run in --output from its last.pth')
    g.add_argument('--checkpoint-interval', type=int, default=0, metavar='N',
                   help='also write last.pth every N updates (0: at epoch ends only)')
    g.add_argument('--seed', type=int, default=0, help='random seed')
    g.add_argument('--log-interval', type=int, default=10, metavar='N', help='batches between progress updates')
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True, help='progress bar per epoch')
    g.add_argument('--config', metavar='YAML', help='YAML file of options')
    track_defaults(parser)
    parser.set_defaults(func=partial(run, parser=parser))
    return parser


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    """The options of `cmtnet train ARGV`, with the recipe and config file applied, as `train` takes them."""
    parser = add_parser(argparse.ArgumentParser(prog='cmtnet').add_subparsers())
    return resolve(parser, parser.parse_args(list(argv)), RECIPES)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return run_reporting_errors('train', lambda: train(resolve(parser, args, RECIPES)))


def _check_options(o: argparse.Namespace) -> None:
    """Refuse inconsistent options before any work starts."""
    positive = ('epochs', 'batch_size', 'accum_steps', 'lr_base_size', 'log_interval')
    for name in positive:
        if getattr(o, name) < 1:
            raise InputError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(o, name)}')
    if o.img_size is not None and (o.img_size < 32 or o.img_size % 32):
        raise InputError(f'--img-size must be a positive multiple of 32, got {o.img_size}')
    if not 0 <= o.warmup_epochs < o.epochs:
        raise InputError(f'--warmup-epochs ({o.warmup_epochs}) must be below --epochs ({o.epochs})')
    if (o.mixup > 0 or o.cutmix > 0) and o.batch_size % 2:
        raise InputError(f'mixup / cutmix pair the images of a batch: --batch-size must be even, got {o.batch_size}')
    if o.opt.lower() not in list_optimizers():
        raise InputError(f'unknown optimizer {o.opt!r}; timm knows {", ".join(list_optimizers())}')
    device = o.device or default_device()
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise InputError(f'--device {device}: CUDA is not available here')
    if o.sync_bn and not (device.startswith('cuda') and int(os.environ.get('WORLD_SIZE', '1')) > 1):
        raise InputError('--sync-bn needs several CUDA processes (torchrun; torch has no SyncBatchNorm on CPU)')
    last = Path(o.output) / 'last.pth'
    if o.resume and not last.is_file():
        raise InputError(f'nothing to resume: {last} does not exist')
    if not o.resume and last.is_file():
        raise InputError(f'{o.output} already holds a run; pass --resume to continue it, or choose another --output')


def train(options: argparse.Namespace) -> Dict[str, Any]:
    """Train as `options` (the resolved `cmtnet train` options) say; returns the last epoch's metrics."""
    _check_options(options)
    env = init_distributed_device_so(device=options.device or default_device())
    try:
        return Trainer(options, torch.device(env['device']), env['global_rank'], env['world_size']).fit()
    finally:
        if env['distributed']:
            dist.destroy_process_group()


class Trainer:
    """One training run: data, model, optimisation and the state that a checkpoint saves."""

    def __init__(self, options: argparse.Namespace, device: torch.device, rank: int = 0, world_size: int = 1):
        o = self.options = options
        self.device, self.rank, self.world_size = device, rank, world_size
        self.distributed = world_size > 1
        self.is_main = rank == 0
        self.output = Path(o.output)

        # data first: a bad folder is reported before the model is built
        model_size = o.img_size or VARIANT_ARGS[o.model]['img_size']
        self.img_size = model_size
        train_set = build_dataset(o.data, o.train_split, model_size)
        self.val_split = o.val_split or default_eval_split(o.data)
        val_set = build_dataset(o.data, self.val_split, model_size)
        self.class_names: List[str] = list(train_set.classes)
        if list(val_set.classes) != self.class_names:
            raise InputError(f'the classes of {self.val_split} ({val_set.classes[:5]}...) differ from those of '
                             f'{o.train_split} ({self.class_names[:5]}...)')
        self.num_classes = len(self.class_names)
        if o.num_classes is not None and o.num_classes != self.num_classes:
            raise InputError(f'--num-classes is {o.num_classes}, but the data has {self.num_classes} classes')
        pin = device.type == 'cuda'
        self.loader = train_loader(
            ReadableImages(train_set, train_transform(
                model_size, o.scale, o.ratio, o.hflip, o.color_jitter, o.aa, o.reprob, o.interpolation), o.strict),
            o.batch_size, rank, world_size, o.seed, o.aug_repeats, o.workers, pin)
        self.val_loader = eval_loader(
            ReadableImages(val_set, eval_transform(model_size, o.crop_pct, o.interpolation), o.strict),
            o.batch_size, rank, world_size, o.workers, pin)

        # the same initial weights in every process, then a different random stream per process
        random_seed(o.seed, 0)
        model_args = dict(num_classes=self.num_classes, img_size=model_size, drop_path_rate=o.drop_path)
        if o.drop is not None:
            model_args['drop_rate'] = o.drop
        model = create_model(o.model, o.pretrained, **model_args)
        random_seed(o.seed, rank)
        if o.sync_bn:
            model = convert_sync_batchnorm(model)
        model.to(device)
        if o.channels_last:
            model.to(memory_format=torch.channels_last)
        self.unwrapped = model  # what checkpoints save and evaluation runs
        self.ema = ModelEmaV3(model, decay=o.model_ema_decay) if o.model_ema else None

        self.global_batch = o.batch_size * world_size * o.accum_steps
        self.lr = o.lr if o.lr is not None else o.lr_base * self.global_batch / o.lr_base_size
        no_decay = () if o.wd_pos_bias else model.no_weight_decay()
        self.optimizer = create_optimizer_v2(
            param_groups_weight_decay(model, o.weight_decay, no_weight_decay_list=no_decay),
            opt=o.opt, lr=self.lr, weight_decay=o.weight_decay)
        self.amp = amp_dtype(o.amp, device)
        # a loss scaler only for float16: bfloat16 has float32's range
        self.scaler = NativeScaler(device=device.type) if self.amp == torch.float16 else None

        if self.distributed:
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == 'cuda' else None)
        if o.compile:
            model = torch.compile(model)
        self.model = model

        self.updates_per_epoch = len(self.loader) // o.accum_steps
        if self.updates_per_epoch == 0:
            raise InputError(f'an epoch has {len(self.loader)} batches, fewer than --accum-steps {o.accum_steps}')
        self.scheduler, self.total_epochs = create_scheduler_v2(
            self.optimizer, 'cosine', num_epochs=o.epochs, warmup_epochs=o.warmup_epochs, warmup_lr=o.warmup_lr,
            min_lr=o.min_lr, cooldown_epochs=o.cooldown_epochs, step_on_epochs=o.step_on_epochs,
            updates_per_epoch=self.updates_per_epoch)

        self.mixup = None
        if o.mixup > 0 or o.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=o.mixup, cutmix_alpha=o.cutmix, label_smoothing=o.smoothing,
                               num_classes=self.num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif o.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=o.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

        # progress, saved in last.pth
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # batches of the current epoch completed (resume mid-epoch)
        self.num_updates = 0
        self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss x images, images, skipped
        self.metrics: List[Dict[str, Any]] = []
        self.best_top1, self.best_epoch = -1., 0
        if o.resume:
            self.load_state_dict(load_state(self.output / 'last.pth'))

    # --- the run ---------------------------------------------------------------------------------------

    def fit(self) -> Dict[str, Any]:
        o = self.options
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            atomic_write(self.output / 'config.yaml', lambda f: f.write(write_config(o).encode()))
            print(f'{o.model} at {self.img_size}px, {self.num_classes} classes, {len(self.loader.dataset)} training '
                  f'images; {self.total_epochs} epochs of {self.updates_per_epoch} updates; global batch '
                  f'{self.global_batch} ({self.world_size} process(es) on {self.device.type}), lr {self.lr:.3g}; '
                  f'output {self.output}')
        while self.epoch < self.total_epochs:
            self.train_one_epoch()
        if self.is_main:
            self._export_final()
        return self.metrics[-1] if self.metrics else {}

    def train_one_epoch(self) -> None:
        """Train one epoch from where the state stands, evaluate, checkpoint and report."""
        o, epoch = self.options, self.epoch
        batches = self.updates_per_epoch * o.accum_steps  # a tail too short for a whole update is left out
        self.loader.sampler.set_epoch(epoch, self.batch_in_epoch * o.batch_size)
        self.model.train()
        started, start_batch = time.perf_counter(), self.batch_in_epoch
        bar = tqdm(total=batches, initial=start_batch, desc=f'epoch {epoch + 1}/{self.total_epochs}',
                   # None: shown on a terminal only, not in logs
                   disable=None if self.is_main and o.progress else True, leave=False, dynamic_ncols=True)
        for batch, (images, targets, skipped) in enumerate(self.loader, start_batch):
            if batch >= batches:
                break
            loss = self.train_step(batch, images, targets)
            self.epoch_sums += torch.stack([
                loss.detach().double() * images.shape[0],
                torch.tensor(images.shape[0], dtype=torch.float64, device=self.device),
                skipped.sum().to(self.device, torch.float64)])
            self.batch_in_epoch = batch + 1
            bar.update()
            updated = self.batch_in_epoch % o.accum_steps == 0
            if self.batch_in_epoch % o.log_interval == 0 or self.batch_in_epoch == batches:
                self._check_finite()
                elapsed = time.perf_counter() - started
                images_done = (self.batch_in_epoch - start_batch) * o.batch_size * self.world_size
                bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{self.optimizer.param_groups[0]["lr"]:.3g}',
                                img_s=f'{images_done / elapsed:.1f}', refresh=False)
            if updated and o.checkpoint_interval and self.num_updates % o.checkpoint_interval == 0 \
                    and self.batch_in_epoch < batches:
                self._check_finite()
                self.save_checkpoint()
        bar.close()
        elapsed = time.perf_counter() - started
        self._end_epoch(elapsed, (self.batch_in_epoch - start_batch) * o.batch_size * self.world_size / elapsed)

    def train_step(self, batch: int, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward the `batch`-th batch of the epoch; an optimizer update (with EMA and schedule
        steps) at the end of each accumulation group. Returns the loss."""
        o = self.options
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if o.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        update = (batch + 1) % o.accum_steps == 0
        # gradients are averaged over processes only on the last batch of an accumulation group
        no_sync = self.model.no_sync() if self.distributed and not update else nullcontext()
        with no_sync:
            with autocast(self.device, self.amp):
                loss = self.criterion(self.model(images), targets)
            scaled = loss / o.accum_steps
            params = self.unwrapped.parameters()
            if self.scaler is not None:
                self.scaler(scaled, self.optimizer, clip_grad=o.clip_grad, clip_mode=o.clip_mode,
                            parameters=params, need_update=update)
            else:
                scaled.backward()
                if update:
                    if o.clip_grad is not None:
                        dispatch_clip_grad(params, o.clip_grad, mode=o.clip_mode)
                    self.optimizer.step()
        if update:
            self.optimizer.zero_grad(set_to_none=True)
            self.num_updates += 1
            if self.ema is not None:
                self.ema.update(self.unwrapped, step=self.num_updates)
            self.scheduler.step_update(num_updates=self.num_updates)
        return loss

    def _check_finite(self) -> None:
        """Stop every process if any has seen a NaN or infinite loss (the running sum keeps it)."""
        bad = (~torch.isfinite(self.epoch_sums[0])).float()
        if self.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            last = self.output / 'last.pth'
            kept = (f'the last good checkpoint, {last}, is kept' if last.is_file()
                    else 'no checkpoint had been written yet')
            raise TrainingDiverged(
                f'the training loss became NaN or infinite in epoch {self.epoch + 1} (update {self.num_updates}); '
                f'{kept}. Lower the learning rate (--lr-base / --lr), add --clip-grad, or check the data')

    def _end_epoch(self, epoch_time: float, img_per_s: float) -> None:
        o = self.options
        self._check_finite()
        sums = self.epoch_sums.clone()
        if self.distributed:
            dist.all_reduce(sums)
        loss_sum, images, skipped = sums.tolist()
        if self.distributed:
            # each process's BatchNorm statistics saw its own batches: evaluate and save their average
            distribute_bn(self.unwrapped, self.world_size, reduce=True)
        val = evaluate(self.unwrapped, self.val_loader, self.num_classes, self.device, self.amp, o.channels_last)
        self.scheduler.step(self.epoch + 1, val['top1'])
        row = dict(epoch=self.epoch + 1, lr=self.optimizer.param_groups[0]['lr'],
                   train_loss=loss_sum / max(images, 1.), val_loss=val['loss'], val_top1=val['top1'],
                   val_top5=val['top5'])
        if self.ema is not None:
            ema_val = evaluate(self.ema.module, self.val_loader, self.num_classes, self.device, self.amp,
                               o.channels_last)
            row.update(ema_top1=ema_val['top1'], ema_top5=ema_val['top5'])
        row.update(skipped=int(skipped), epoch_time=epoch_time, img_per_s=img_per_s)
        self.metrics.append(row)
        improved = val['top1'] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = val['top1'], self.epoch + 1
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums.zero_()
        if self.is_main and improved:
            export_weights(self.output / 'best.safetensors', self.unwrapped.state_dict(),
                           dict(self._meta(), epoch=self.epoch, val_top1=val['top1']))
        self.save_checkpoint()
        if self.is_main:
            ema = f'  ema top-1 {row["ema_top1"]:.2f}%' if self.ema is not None else ''
            skips = f'  skipped {int(skipped)} unreadable image(s)' if skipped else ''
            print(f'epoch {self.epoch}/{self.total_epochs}  train loss {row["train_loss"]:.4f}  '
                  f'val loss {val["loss"]:.4f}  top-1 {val["top1"]:.2f}%  top-5 {val["top5"]:.2f}%{ema}  '
                  f'lr {row["lr"]:.3g}  {img_per_s:.1f} img/s  {epoch_time:.1f} s{skips}', flush=True)

    # --- checkpoints ------------------------------------------------------------------------------------

    def _meta(self) -> Dict[str, Any]:
        """What eval and predict need to know about the weights."""
        o = self.options
        return dict(model=o.model, img_size=self.img_size, num_classes=self.num_classes,
                    class_names=self.class_names, crop_pct=o.crop_pct, interpolation=o.interpolation)

    def state_dict(self, rng: List[Dict[str, torch.Tensor]]) -> Dict[str, Any]:
        """Everything needed to continue exactly: `rng` holds the RNG states of every process."""
        o = self.options
        state = dict(
            model=self.unwrapped.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            epoch=self.epoch,
            num_updates=self.num_updates,
            # the sampler position, in images of the epoch's global order
            samples_in_epoch=self.batch_in_epoch * o.batch_size * self.world_size,
            epoch_sums=self.epoch_sums.cpu(),
            metrics=self.metrics,
            best_top1=self.best_top1,
            best_epoch=self.best_epoch,
            rng=rng,
            meta=self._meta(),
        )
        if self.ema is not None:
            state['model_ema'] = self.ema.module.state_dict()
        if self.scaler is not None:
            state['scaler'] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        o = self.options
        try:
            self.unwrapped.load_state_dict(state['model'])
            if self.ema is not None:
                self.ema.module.load_state_dict(state.get('model_ema', state['model']))
        except RuntimeError as e:
            raise InputError(f'{self.output / "last.pth"} does not fit this model ({o.model}, {self.img_size}px, '
                             f'{self.num_classes} classes); resume with the options of the run: {e}') from e
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.scaler is not None and 'scaler' in state:
            self.scaler.load_state_dict(state['scaler'])
        self.epoch, self.num_updates = state['epoch'], state['num_updates']
        self.metrics, self.best_top1, self.best_epoch = state['metrics'], state['best_top1'], state['best_epoch']
        self.epoch_sums = state['epoch_sums'].to(self.device)
        per_batch = o.batch_size * self.world_size
        if state['samples_in_epoch'] % (per_batch * o.accum_steps):
            raise InputError(
                f'last.pth stopped {state["samples_in_epoch"]} images into epoch {self.epoch + 1}, which is not a '
                f'whole number of updates of {per_batch * o.accum_steps} images; resume with the batch size, '
                f'number of processes and --accum-steps of the run')
        self.batch_in_epoch = state['samples_in_epoch'] // per_batch
        if len(state['rng']) == self.world_size:
            restore_rng(state['rng'][self.rank])
        else:
            _logger.warning('last.pth comes from %d process(es), this run has %d: random draws will not repeat '
                            'those of the interrupted run', len(state['rng']), self.world_size)
        if self.is_main:
            print(f'resuming {self.output} at epoch {self.epoch + 1}, batch {self.batch_in_epoch}')

    def save_checkpoint(self) -> None:
        """Write last.pth, metrics.csv and ema.safetensors (all processes take part, the first writes)."""
        rng = capture_rng()
        states = [rng]
        if self.distributed:
            states = [None] * self.world_size
            dist.all_gather_object(states, rng)
        if not self.is_main:
            return
        self.output.mkdir(parents=True, exist_ok=True)
        save_state(self.output / 'last.pth', self.state_dict(states))
        atomic_write(self.output / 'metrics.csv', lambda f: f.write(_metrics_csv(self.metrics).encode()))
        if self.ema is not None:
            export_weights(self.output / 'ema.safetensors', self.ema.module.state_dict(), self._meta())

    def _export_final(self) -> None:
        """The final weights as .safetensors, the curves as a PNG, and a closing summary."""
        export_weights(self.output / 'model.safetensors', self.unwrapped.state_dict(), self._meta())
        if self.ema is not None:
            export_weights(self.output / 'model_ema.safetensors', self.ema.module.state_dict(), self._meta())
        if self.metrics:
            atomic_write(self.output / 'curves.png', lambda f: f.write(plot_curves(self.metrics)))
            last = self.metrics[-1]
            ema = f', EMA {last["ema_top1"]:.2f}%' if 'ema_top1' in last else ''
            print(f'done: val top-1 {last["val_top1"]:.2f}%{ema} (best {self.best_top1:.2f}% at epoch '
                  f'{self.best_epoch}); weights in {self.output}')


def _metrics_csv(rows: List[Dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows({k: f'{v:.6g}' if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return out.getvalue()


def plot_curves(rows: List[Dict[str, Any]]) -> bytes:
    """Loss and accuracy per epoch as a PNG."""
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    epochs = [r['epoch'] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r['train_loss'] for r in rows], label='train')
    ax_loss.plot(epochs, [r['val_loss'] for r in rows], label='validation')
    ax_loss.set(xlabel='epoch', ylabel='loss', title='loss')
    for key, label in (('val_top1', 'top-1'), ('val_top5', 'top-5'), ('ema_top1', 'EMA top-1')):
        if key in rows[0]:
            ax_acc.plot(epochs, [r[key] for r in rows], label=label)
    ax_acc.set(xlabel='epoch', ylabel='accuracy (%)', title='validation accuracy')
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=100)
    plt.close(fig)
    return buf.getvalue()
