"""Semantic FPN-CMT-S and UPerNet-CMT-S on a CUDA GPU at ADE20K's setting: training step time and peak
memory, inference images per second, and the sliding-window time of one evaluation image, with bf16 autocast.

For each head, on synthetic 512x512 crops with random labels of 150 classes (ADE20K's paper-era setting,
which the 80k and 160k schedules run at a batch of 16):
- training: `--batch-size` crops per step (default 16), forward, cross-entropy (pixels labelled 255 left
  out, as `cmtnet segment train` computes it), backward and an AdamW step, the step timed after warm-up
  steps (median of `--rounds`);
- inference: eval mode under inference_mode, the same batch of crops, whole images at a single scale,
  images per second (median of `--rounds`);
- sliding-window inference of one 512x2048 image (`--slide-image`), as `cmtnet segment eval --slide` scores
  it: crop-size windows 2/3 of a crop apart (512 and 341), overlaps averaged, softmax scores at the image's
  size; seconds per image (median of `--rounds`);
- the peak allocated memory of each, over its warm-up steps (at least one), less what the other head holds
  on the device (its weights and optimizer state), so that it is the head's own;
- the hours the published schedule takes on one GPU at the measured step time: Semantic FPN 80k and
  UPerNet 160k updates of 16 images (as many images at another batch size).
The two heads take turns round by round (`timing.interleaved`), so that a change in the machine's load hits
them alike.

    python benchmarks/gpu_segmentation_check.py                          # on a GPU: the table, exit 2 without one
    python benchmarks/gpu_segmentation_check.py --json segmentation_gpu.json --channels-last
    python benchmarks/gpu_segmentation_check.py --device cpu --size 64 --batch-size 2 --warmup 1 --rounds 1   # dry run
"""
import argparse
import json
import statistics
import sys
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from cmtnet.runtime import autocast, prepare_model, to_device
from cmtnet.segmentation import build_segmenter
from cmtnet.segmentation.evaluate import Protocol
from cmtnet.segmentation.metrics import IGNORE_INDEX
from timing import interleaved

HEADS = ('fpn', 'upernet')
# the published schedules, in updates of 16 images: Semantic FPN (PVT, Next-ViT) and UPerNet (Swin, Twins)
SCHEDULES = {'fpn': 80_000, 'upernet': 160_000}
SCHEDULE_BATCH = 16
PHASES = ('train', 'infer', 'slide')


def _peak_mib(device: torch.device, others: int) -> float:
    if device.type != 'cuda':
        return float('nan')
    return (torch.cuda.max_memory_allocated(device) - others) / 2 ** 20


def _resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes a head keeps on the device between steps: weights, buffers and optimizer state."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors if t.device.type != 'cpu')


class Head:
    """One segmenter with its optimizer, and its three timed steps on shared inputs."""

    def __init__(self, head: str, args: argparse.Namespace, device: torch.device,
                 inputs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
        self.model = prepare_model(build_segmenter(head, args.model, args.num_classes), device, args.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-4)
        self.amp: Optional[torch.dtype] = torch.bfloat16 if args.amp == 'bf16' else None
        self.device = device
        self.images, self.labels, self.large = inputs
        height, width = self.large.shape[-2:]
        self.protocol = Protocol((width, height), args.size, slide=True)  # the image is at the evaluation scale
        self.num_classes = args.num_classes

    def train(self) -> None:
        self.model.train()
        with autocast(self.device, self.amp):
            logits = self.model(self.images)
        loss = F.cross_entropy(logits.float(), self.labels, ignore_index=IGNORE_INDEX)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def infer(self) -> None:
        self.model.eval()
        with torch.inference_mode(), autocast(self.device, self.amp):
            self.model(self.images)

    def slide(self) -> None:
        self.model.eval()
        with torch.inference_mode(), autocast(self.device, self.amp):
            self.protocol.scores(self.model, self.large[0], self.num_classes)

    def step(self, phase: str) -> Callable[[], None]:
        return getattr(self, phase)


def synthetic_inputs(args: argparse.Namespace, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crops (B, 3, S, S), labels (B, S, S) with a 255 border, one large image (1, 3, H, W)), values 0..1."""
    g = torch.Generator().manual_seed(0)
    size = args.size
    images = torch.rand(args.batch_size, 3, size, size, generator=g)
    labels = torch.randint(0, args.num_classes, (args.batch_size, size, size), generator=g)
    labels[:, :, -size // 16:] = IGNORE_INDEX  # padding, as a crop of a narrow image has
    large = torch.rand(1, 3, *args.slide_image, generator=g)
    return (to_device(images, device, args.channels_last), labels.to(device),
            to_device(large, device, args.channels_last))


def run(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    device = torch.device(args.device)
    inputs = synthetic_inputs(args, device)
    heads = {h: Head(h, args, device, inputs) for h in HEADS}
    results: Dict[str, Dict[str, float]] = {h: {} for h in HEADS}
    for phase in PHASES:
        for name, head in heads.items():  # the peak of each alone: warm-up steps with the memory counter reset
            if device.type == 'cuda':
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.warmup):
                head.step(phase)()
            others = sum(_resident_bytes(h.model, h.optimizer) for n, h in heads.items() if n != name)
            results[name][f'{phase}_peak_mib'] = _peak_mib(device, others)
        _, times = interleaved({n: h.step(phase) for n, h in heads.items()}, 0, args.rounds, device)
        for name in HEADS:
            seconds = statistics.median(times[name])
            results[name][f'{phase}_step_s'] = seconds
            if phase != 'slide':
                results[name][f'{phase}_images_per_s'] = args.batch_size / seconds
    for name, r in results.items():
        updates = SCHEDULES[name] * SCHEDULE_BATCH / args.batch_size
        r['schedule_updates'] = updates
        r['schedule_hours'] = updates * r['train_step_s'] / 3600
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--model', default='cmt_s')
    parser.add_argument('--size', type=int, default=512, help='side of the training and inference crops')
    parser.add_argument('--slide-image', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'),
                        help='the image of the sliding-window inference (default: SIZE x 4 SIZE, 512x2048)')
    parser.add_argument('--num-classes', type=int, default=150)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--amp', choices=['bf16', 'none'], default='bf16')
    parser.add_argument('--channels-last', action='store_true', help='model and inputs in channels_last memory')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first (at least 1: the peak memory)')
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--json', help='also write the numbers here')
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error('--warmup must be at least 1 (the peak memory is that of the warm-up steps)')
    if args.batch_size < 2:  # BatchNorm on the 1x1 pooled map cannot train on one image
        parser.error("--batch-size must be at least 2: UPerNet's pyramid pooling normalises a 1x1 map over the batch")
    args.slide_image = args.slide_image or [args.size, 4 * args.size]
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print('no CUDA device: run this on a GPU machine, or pass --device cpu for a dry run', file=sys.stderr)
        return 2
    results = run(args)
    height, width = args.slide_image
    print(f'{args.model}, {args.num_classes} classes, {args.size}x{args.size} crops, batch {args.batch_size}, '
          f'{args.amp}{", channels_last" if args.channels_last else ""}, {args.device} '
          f'({torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"}); median of {args.rounds}')
    print(f'| head | train step (s) | train img/s | train peak (MiB) | infer img/s | infer peak (MiB) | '
          f'slide {height}x{width} (s) | slide peak (MiB) | schedule (h) |')
    print('|:---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for head, r in results.items():
        print(f'| {head} | {r["train_step_s"]:.3f} | {r["train_images_per_s"]:.1f} | {r["train_peak_mib"]:.0f} | '
              f'{r["infer_images_per_s"]:.1f} | {r["infer_peak_mib"]:.0f} | {r["slide_step_s"]:.3f} | '
              f'{r["slide_peak_mib"]:.0f} | {r["schedule_hours"]:.1f} |')
    print('schedule: ' + ', '.join(f'{h} {SCHEDULES[h] // 1000}k updates of {SCHEDULE_BATCH} images '
                                   f'({results[h]["schedule_updates"]:.0f} of {args.batch_size})' for h in HEADS))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
