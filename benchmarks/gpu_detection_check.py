"""RetinaNet-CMT-S and Mask R-CNN-CMT-S on a CUDA GPU at 800x1333: training step time and peak memory, and
inference images per second, with bf16 autocast.

For each detector, on synthetic 800x1333 images with a few random boxes (and masks) per image:
- training: `--batch-size` images per step (default 2), AdamW, bf16 autocast, the step timed after warm-up
  steps (median of `--rounds`), peak allocated memory over the timed steps;
- inference: eval mode under inference_mode, batch `--batch-size`, images per second (median of `--rounds`),
  peak allocated memory.
Both detectors take turns round by round (`timing.interleaved`), so that a change in the machine's load
hits them alike.

    python benchmarks/gpu_detection_check.py                          # on a GPU: the table, exit 2 without one
    python benchmarks/gpu_detection_check.py --json detection_gpu.json
    python benchmarks/gpu_detection_check.py --device cpu --size 320 512 --rounds 1 --warmup 1   # dry run
"""
import argparse
import json
import statistics
import sys
from typing import Callable, Dict, List, Tuple

import torch

from cmtnet.detection import build_detector
from cmtnet.runtime import autocast
from timing import interleaved

DETECTORS = ('retinanet', 'maskrcnn')


def synthetic_batch(batch_size: int, size: Tuple[int, int], device: torch.device, masks: bool,
                    num_classes: int = 80, seed: int = 0) -> Tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]:
    """Images of `size` (H, W) with 5 random boxes each (and box-filling masks), as torchvision takes them."""
    g = torch.Generator().manual_seed(seed)
    height, width = size
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        corner = torch.rand(5, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        extent = 32 + torch.rand(5, 2, generator=g) * torch.tensor([width * 0.25, height * 0.25])
        boxes = torch.cat([corner, corner + extent], 1).round()
        target = {'boxes': boxes.to(device), 'labels': torch.randint(1, num_classes, (5,), generator=g).to(device)}
        if masks:
            mask = torch.zeros(5, height, width, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                mask[i, y0:y1, x0:x1] = 1
            target['masks'] = mask.to(device)
        targets.append(target)
    return images, targets


def _peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else float('nan')


def _steps(detector: str, args: argparse.Namespace, device: torch.device) -> Tuple[Callable, Callable]:
    size = tuple(args.size)
    model = build_detector(detector, args.model, 81 if detector == 'maskrcnn' else 80,
                           min_size=min(size), max_size=max(size)).to(device)
    images, targets = synthetic_batch(args.batch_size, size, device, masks=detector == 'maskrcnn')
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    amp = torch.bfloat16 if args.amp == 'bf16' else None

    def train() -> None:
        model.train()
        with autocast(device, amp):
            loss = sum(model(images, targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast(device, amp):
            model(images)
    return train, infer


def run(args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    device = torch.device(args.device)
    steps = {d: _steps(d, args, device) for d in DETECTORS}
    results: Dict[str, Dict[str, float]] = {d: {} for d in DETECTORS}
    for phase, index in (('train', 0), ('infer', 1)):
        for detector in DETECTORS:  # the peak of each alone: warm-up steps with the memory counter reset
            if device.type == 'cuda':
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.warmup):
                steps[detector][index]()
            results[detector][f'{phase}_peak_mib'] = _peak_mib(device)
        _, times = interleaved({d: steps[d][index] for d in DETECTORS}, 0, args.rounds, device)
        for detector in DETECTORS:
            seconds = statistics.median(times[detector])
            results[detector][f'{phase}_step_s'] = seconds
            results[detector][f'{phase}_images_per_s'] = args.batch_size / seconds
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--model', default='cmt_s')
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1333], metavar=('SHORT', 'LONG'))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--amp', choices=['bf16', 'none'], default='bf16')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--json', help='also write the numbers here')
    args = parser.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print('no CUDA device: run this on a GPU machine, or pass --device cpu for a dry run', file=sys.stderr)
        return 2
    results = run(args)
    print(f'{args.model}, {args.size[0]}x{args.size[1]}, batch {args.batch_size}, {args.amp}, {args.device} '
          f'({torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"}); median of {args.rounds}')
    print('| detector | train step (s) | train img/s | train peak (MiB) | infer img/s | infer peak (MiB) |')
    print('|:---|---:|---:|---:|---:|---:|')
    for detector, r in results.items():
        print(f'| {detector} | {r["train_step_s"]:.3f} | {r["train_images_per_s"]:.1f} | {r["train_peak_mib"]:.0f} | '
              f'{r["infer_images_per_s"]:.1f} | {r["infer_peak_mib"]:.0f} |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
