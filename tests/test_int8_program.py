"""The int8 runtime: a second process that runs the same program loads it compiled from the cache."""
import json
import subprocess
import sys

import torch
import torch.nn as nn

from cmtnet.deploy.quantize import calibrated_graph, quantized_program, save_quantized
from cmtnet.int8_program import load_quantized

SIZE = 16

_INPUT = 'torch.linspace(-2, 2, 3 * 3 * {size} * {size}).reshape(3, 3, {size}, {size})'.format(size=SIZE)
# a fresh process: load the program, run a batch of 3 (compiled for, or loaded at, that size), say how
_RUN = '''
import json, sys, torch
from cmtnet.int8_program import load_quantized
model, _ = load_quantized(sys.argv[1])
logits = model({input})
print(json.dumps(dict(compiled=list(model.compile_seconds), cached=list(model.cache_seconds),
                      logits=logits.tolist())))
'''.format(input=_INPUT)


def _tiny_program(path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * SIZE * SIZE, 4))
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    program = quantized_program(calibrated_graph(model.eval(), [images], SIZE, fold=False, calibration='minmax'))
    save_quantized(path, program, dict(model='cmt_ti', num_classes=4, img_size=SIZE, crop_pct=1.0,
                                       interpolation='bicubic', class_names=None, mode='int8'))


def test_a_second_process_loads_the_compiled_program_from_the_cache(tmp_path, monkeypatch):
    path = tmp_path / 'tiny_int8.pt2'
    _tiny_program(path)
    monkeypatch.setenv('CMTNET_CACHE', str(tmp_path / 'cache'))
    # the first start here, the second in a fresh process (the start-up paid once)
    model, _ = load_quantized(path)
    logits = model(eval(_INPUT, {'torch': torch})).tolist()
    first = dict(compiled=list(model.compile_seconds), cached=list(model.cache_seconds), logits=logits)
    done = subprocess.run([sys.executable, '-c', _RUN, str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    second = json.loads(done.stdout.strip().splitlines()[-1])
    assert (first['compiled'], first['cached']) == ([3], [])
    assert (second['compiled'], second['cached']) == ([], [3])
    assert [p.name.endswith('-b3.pt2') for p in (tmp_path / 'cache' / 'int8').iterdir()] == [True]
    assert second['logits'] == first['logits']
