"""The released ImageNet training recipes of the CMT variants, as presets of `cmtnet train --recipe NAME`.

The authors trained on 8 GPUs (DeiT's training code) with the global batches below, the learning rate
scaled by global batch / 512. A preset sets the per-process batch to its global batch / 8, so 8 processes
reproduce the released run; on any other number of processes (or with --accum-steps) the learning rate
follows the global batch actually used. Options given in a config file or on the command line override a
preset.

| variant | epochs | global batch | base lr | wd   | drop path | EMA     | warm-up | min lr |
|---------|--------|--------------|---------|------|-----------|---------|---------|--------|
| cmt_ti  | 800    | 2048         | 8e-4    | 0.05 | 0.1       | off     | 20      | 1e-5   |
| cmt_xs  | 400    | 2048         | 7e-4    | 0.04 | 0.08      | 0.9998  | 20      | 2e-5   |
| cmt_s   | 300    | 1024         | 5e-4    | 0.05 | 0.1       | 0.99996 | 20      | 1e-5   |
| cmt_b   | 300    | 512          | 5e-4    | 0.05 | 0.25      | 0.99996 | 20      | 2e-5   |

Shared: AdamW (eps 1e-8, torch's default; weight decay on the position biases too, not on norms and
biases), cosine schedule with 10 cool-down epochs at the minimum lr
(trained after the cosine epochs, as timm counts them), RandAugment rand-m9-mstd0.5-inc1, random erasing
0.25, mixup 0.8 / cutmix 1.0, label smoothing 0.1, repeated augmentation x3, bicubic interpolation,
evaluation at the native size after resizing to size / 0.875, the lr schedule stepped once per epoch.
"""
from typing import Any, Dict

__all__ = ['RECIPES', 'RELEASED_PROCESSES']

# the authors' number of GPUs, which the per-process batch of a preset assumes
RELEASED_PROCESSES = 8

_SHARED: Dict[str, Any] = dict(
    opt='adamw',
    # the released model listed no parameters to exempt, so its position biases were decayed too
    wd_pos_bias=True,
    lr_base_size=512,
    warmup_epochs=20,
    warmup_lr=1e-6,
    cooldown_epochs=10,
    step_on_epochs=True,
    aa='rand-m9-mstd0.5-inc1',
    color_jitter=0.4,
    scale=[0.08, 1.0],
    ratio=[0.75, 4 / 3],
    hflip=0.5,
    reprob=0.25,
    mixup=0.8,
    cutmix=1.0,
    smoothing=0.1,
    aug_repeats=3,
    interpolation='bicubic',
    crop_pct=0.875,
)


def _recipe(model: str, img_size: int, epochs: int, global_batch: int, lr_base: float, weight_decay: float,
            drop_path: float, ema_decay: float, min_lr: float) -> Dict[str, Any]:
    return dict(
        _SHARED,
        model=model,
        img_size=img_size,
        epochs=epochs,
        batch_size=global_batch // RELEASED_PROCESSES,
        lr_base=lr_base,
        weight_decay=weight_decay,
        drop_path=drop_path,
        model_ema=ema_decay > 0,
        model_ema_decay=ema_decay or 0.99996,
        min_lr=min_lr,
    )


RECIPES: Dict[str, Dict[str, Any]] = {
    'cmt_ti': _recipe('cmt_ti', 160, 800, 2048, 8e-4, 0.05, 0.1, 0., 1e-5),
    'cmt_xs': _recipe('cmt_xs', 192, 400, 2048, 7e-4, 0.04, 0.08, 0.9998, 2e-5),
    'cmt_s': _recipe('cmt_s', 224, 300, 1024, 5e-4, 0.05, 0.1, 0.99996, 1e-5),
    'cmt_b': _recipe('cmt_b', 256, 300, 512, 5e-4, 0.05, 0.25, 0.99996, 2e-5),
}
