"""The int8 runtime: a program compiled before it was written (as `cmtnet quantize` checks it) is kept under the
written file's name, and a later process that runs the file loads it compiled from the cache, at any batch."""
import json
import re
import subprocess
import sys

import torch
import torch.nn as nn

from cmtnet.deploy.quantize import calibrated_graph, quantized_program, save_quantized
from cmtnet.int8_program import QuantizedProgram, compile_cache_dir, load_quantized

SIZE = 16

_INPUT = 'torch.linspace(-2, 2, 7 * 3 * {size} * {size}).reshape(7, 3, {size}, {size})'.format(size=SIZE)
# a fresh process: load the program, run a batch of 3 and one of 7 whose first 3 images are those, say how
_RUN = '''
import json, sys, torch
from cmtnet.int8_program import load_quantized
model, _ = load_quantized(sys.argv[1])
images = {input}
three = model(images[:3])
seven = model(images)
print(json.dumps(dict(compiled=list(model.compile_seconds), cached=list(model.cache_seconds),
                      three=three.tolist(), seven=seven.tolist())))
'''.format(input=_INPUT)
META = dict(model='cmt_ti', num_classes=4, img_size=SIZE, crop_pct=1.0, interpolation='bicubic', class_names=None,
            mode='int8')


def _tiny_program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * SIZE * SIZE, 4))
    images = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    return quantized_program(calibrated_graph(model.eval(), [images], SIZE, fold=False, calibration='minmax'))


def test_a_program_compiled_before_it_was_written_runs_compiled_from_the_cache_at_any_batch(tmp_path, monkeypatch):
    monkeypatch.setenv('CMTNET_CACHE', str(tmp_path / 'cache'))
    cache = compile_cache_dir()
    program = _tiny_program()
    # as cmtnet quantize checks a program: compiled into a staging folder in the cache, then written
    checked = QuantizedProgram(program, 'int8', cache=cache / '.staging' / 'trial0')
    first = checked(eval(_INPUT, {'torch': torch})[:3]).tolist()
    assert list(checked.compile_seconds) == [3]
    path = tmp_path / 'tiny_int8.pt2'
    save_quantized(path, program, META)
    kept = checked.keep_as(path)
    assert [p.parent for p in kept] == [cache] and kept[0].name.endswith('-b3.pt2')
    assert list((cache / '.staging').iterdir()) == []
    # the file's first run, in a fresh process: the kept package serves a batch of 3 and, in pieces, one of 7
    done = subprocess.run([sys.executable, '-c', _RUN, str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    second = json.loads(done.stdout.strip().splitlines()[-1])
    assert (second['compiled'], second['cached']) == ([], [3])
    assert second['three'] == first and second['seven'][:3] == first and len(second['seven']) == 7
    # each piece's logits are its own images' (in order): close to the reference ops', which round otherwise
    reference, _ = load_quantized(path, compile=False)
    expected = reference(eval(_INPUT, {'torch': torch}))
    torch.testing.assert_close(torch.tensor(second['seven']), expected, rtol=0, atol=0.05 * expected.abs().max().item())


def test_any_package_serves_any_batch_and_own_sizes_get_their_own(tmp_path, monkeypatch):
    program = _tiny_program()
    ran = []

    def package(self, images, path):  # stands in for AOTInductor's compile, which takes a while
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'')

    def load(path):
        size = int(re.search(r'-b(\d+)\.pt2$', path).group(1))

        def run(images):
            assert images.shape[0] == size and images.is_contiguous()
            ran.append(size)
            return program(images)
        return run
    monkeypatch.setattr(QuantizedProgram, '_package', package)
    monkeypatch.setattr('torch._inductor.aoti_load_package', load)
    x = torch.randn(9, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    model = QuantizedProgram(program, 'int8', cache=tmp_path / 'key')
    model.own_sizes = {1}
    for n, runs in ((4, [4]), (3, [4]), (1, [1]), (2, [4]), (9, [4, 4, 4])):
        ran.clear()
        torch.testing.assert_close(model(x[:n].contiguous(memory_format=torch.channels_last)), program(x[:n]),
                                   rtol=1e-4, atol=1e-4)
        assert ran == runs, n  # padded to the smallest that holds it, in pieces of the largest, or its own
    assert (list(model.compile_seconds), list(model.cache_seconds)) == ([4, 1], [])
    # a later run of the file finds both packages: a batch of 2 is padded to 4, nothing is compiled
    later = QuantizedProgram(program, 'int8', cache=tmp_path / 'key')
    ran.clear()
    later(x[:2])
    assert ran == [4] and (list(later.compile_seconds), list(later.cache_seconds)) == ([], [4])
