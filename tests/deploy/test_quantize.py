"""Int8 quantization (torchao PT2E): `cmtnet quantize`, its file, and eval / predict taking that file.

One quantization of a tiny cmt_ti (64 px, 10 classes, random weights) serves every test: quantizing and
checking it takes most of this file's time. Compiling the program to int8 kernels takes minutes even for a
tiny model, so the tests run the program's reference ops (`--no-compile`), which round otherwise than the
kernels (`cmtnet quantize` compiles for its check unless told not to).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.checkpoints import create_model, export_weights
from cmtnet.classification.data import build_dataset, eval_transform
from cmtnet.classification.evaluate import eval_command, load_for_inference
from cmtnet.classification.options import EvalOptions, ModelOptions, PredictOptions
from cmtnet.classification.predict import predict_command
from cmtnet.cli import run_reporting_errors
from cmtnet.deploy import quantize
from cmtnet.deploy.int8_fallback import sensitivities
from cmtnet.deploy.quantize import calibration_batches, compare
from cmtnet.engine.data import ReadableImages, digits_split, eval_loader
from cmtnet.errors import InputError
from cmtnet.int8_program import (QUANTIZED_META_FILE, QuantizedProgram, compile_cache_dir, is_quantized_file,
                                 load_quantized, quantized_versions)
from released import make_state, released_keys

SIZE = 64
CLASSES = [str(c) for c in range(10)]


def _quantize_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='cmtnet')
    quantize.add_parser(parser.add_subparsers(dest='command', required=True))
    return parser


def _digits_folder(root, per_class=2):
    """ROOT/val/<digit>/<n>.png: a few of the digits' held-out images, as an ImageFolder tree."""
    digits = digits_split()
    counts = dict.fromkeys(CLASSES, 0)
    for i in digits.test:
        label = str(digits.targets[i])
        if counts[label] < per_class:
            (root / 'val' / label).mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels).resize((SIZE, SIZE)).convert('RGB').save(root / 'val' / label / f'{i}.png')
            counts[label] += 1
    return root


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """The command line `cmtnet quantize` on our tiny checkpoint: (folder, checkpoint, program file, result)."""
    root = tmp_path_factory.mktemp('quantize')
    # weights in the released format, drawn at the scales of trained ones: a random init's logits nearly tie
    released = root / 'released.pth'
    torch.save({'model': make_state(released_keys('cmt_ti', SIZE, num_classes=10), seed=0)}, released)
    model = create_model('cmt_ti', released, num_classes=10, img_size=SIZE)
    checkpoint = root / 'model.safetensors'
    export_weights(checkpoint, model.state_dict(), dict(model='cmt_ti', img_size=SIZE, class_names=CLASSES))
    data = _digits_folder(root / 'digits')
    output = root / 'cmt_ti_int8.pt2'
    args = _quantize_parser().parse_args([
        'quantize', '--checkpoint', str(checkpoint), '--val-images', str(data / 'val'), '--calibration-size', '8',
        '--batch-size', '4', '--workers', '0', '--max-drop', '100', '--no-compile', '--output', str(output)])
    return root, checkpoint, output, args.func(args)


def test_calibration_batches_are_eval_transformed_and_limited(tmp_path):
    batches = list(calibration_batches(SIZE, limit=5, batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 3, SIZE, SIZE)] * 2 + [(1, 3, SIZE, SIZE)]
    first = eval_transform(SIZE)(build_dataset(None, 'train', SIZE)[0][0])
    assert torch.equal(batches[0][0], first)


def test_the_file_round_trips_with_its_metadata(run):
    _, _, output, result = run
    assert is_quantized_file(output)
    model, meta = load_quantized(output, compile=False)
    assert {k: meta[k] for k in ('model', 'num_classes', 'img_size', 'class_names', 'mode')} == dict(
        model='cmt_ti', num_classes=10, img_size=SIZE, class_names=CLASSES, mode='int8')
    assert {k: meta[k] for k in ('torch', 'torchao')} == quantized_versions()
    x = torch.randn(3, 3, SIZE, SIZE)  # another batch than the export's: the batch is dynamic
    with torch.no_grad():
        assert torch.equal(model(x), result['program'](x))


def test_quantized_program_stays_close_to_the_float_model(run):
    root, checkpoint, _, result = run
    # 20 images of a random network: the accuracies are noise, the agreement is not
    assert result['count'] == 20 and result['agreement'] >= 70
    reference = load_for_inference(ModelOptions(checkpoint=str(checkpoint)), torch.device('cpu'))['model'].eval()
    x = next(calibration_batches(SIZE, limit=4))
    with torch.no_grad():
        expected, got = reference(x), result['program'](x)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 0.2


def _doctored(source, target, **changes):
    """A copy of the zip `source` whose metadata entry has `changes`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, 'w') as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename.endswith('extra/' + QUANTIZED_META_FILE):
                data = json.dumps({**json.loads(data), **changes}).encode()
            new.writestr(item, data)
    return target


def test_loading_refuses_other_versions_and_other_files(run, tmp_path):
    root, checkpoint, output, _ = run
    old = _doctored(output, tmp_path / 'old.pt2', torch='2.0.0')
    with pytest.raises(InputError, match=rf'torch 2\.0\.0 and torchao .*this is torch {re.escape(torch.__version__)}'):
        load_quantized(old)
    for other in (checkpoint, _doctored(output, tmp_path / 'other.pt2', format='something-else')):
        assert not is_quantized_file(other)
        with pytest.raises(InputError, match='is not a quantized program'):
            load_quantized(other)


def test_the_accuracy_check_runs_the_compiled_program_unless_told_not_to(run, tmp_path, monkeypatch, capsys):
    root, checkpoint, _, result = run
    monkeypatch.setattr(quantize, 'calibrated_graph', lambda *args, **kwargs: result['graph'])
    asked = []

    def program_recording_compile(program, mode, compile=True, cache=None):
        asked.append((compile, cache is not None and cache.parent.parent == compile_cache_dir()))
        return QuantizedProgram(program, mode, compile=False)  # compiling would take minutes
    monkeypatch.setattr(quantize, 'QuantizedProgram', program_recording_compile)
    monkeypatch.setattr(quantize, 'save_quantized', lambda *args: None)  # what is written is checked elsewhere
    for flags in ([], ['--no-compile']):
        args = _quantize_parser().parse_args([
            'quantize', '--checkpoint', str(checkpoint), '--val-images', str(root / 'digits' / 'val'),
            '--calibration-size', '4', '--max-drop', '100', '--workers', '0', '--output', str(tmp_path / 'q.pt2'),
            *flags])
        args.func(args)
    # the default checks what cmtnet eval runs by default: the int8 kernels, compiled into a staging folder in
    # the cache, whence the program written keeps them (tests/test_int8_program.py)
    assert asked == [(True, True), (False, False)] and ModelOptions(checkpoint='q.pt2').compile
    checks = [line for line in capsys.readouterr().out.splitlines() if 'top-1 fp32' in line]
    assert [re.search(r'int8 \((.*?)\)', line).group(1) for line in checks] == ['int8 kernels', 'reference ops']


def test_a_compiled_program_pads_a_smaller_batch_instead_of_compiling_again(run, monkeypatch):
    _, _, output, _ = run
    seen = []

    def recording_compile(program):  # stands in for inductor, whose compiles take minutes
        def compiled(images):
            seen.append((images.shape[0], images.is_contiguous(memory_format=torch.channels_last)))
            return program(images)
        return compiled
    monkeypatch.setattr(torch, 'compile', recording_compile)
    model, _ = load_quantized(output, cache=False)  # compiled through torch.compile, not ahead of time
    reference, _ = load_quantized(output, compile=False)
    x = torch.randn(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    for n, size, memory_format in ((4, 4, torch.contiguous_format), (3, 4, torch.contiguous_format),
                                   (1, 4, torch.channels_last), (6, 6, torch.contiguous_format),
                                   (5, 6, torch.contiguous_format)):
        images = x[:n].contiguous(memory_format=memory_format)
        got = model(images)
        assert got.shape == (n, 10)
        # the zeros added leave the images' logits as the program gives them in a batch of that size (its float
        # rounding at a batch of one differs from a larger batch's, and an int8 rounding can follow it)
        padded = torch.cat([x[:n], torch.zeros(size - n, 3, SIZE, SIZE)]).contiguous(memory_format=memory_format)
        torch.testing.assert_close(got, reference(padded)[:n], rtol=1e-5, atol=1e-5)
    # only a batch larger than any compiled reaches the compiler at a new size; the padding keeps the layout
    assert seen == [(4, False), (4, False), (4, True), (6, False), (6, False)]
    assert model.compiled_batch_sizes == [4, 6]
    # a size of its own (a service's single image) is compiled for, not padded
    model.own_sizes = {1}
    model(x[:1])
    assert seen[-1] == (1, False) and model.compiled_batch_sizes == [1, 4, 6]
    assert list(model.compile_seconds) == [4, 6, 1]


def test_a_drop_beyond_max_drop_writes_nothing(run, tmp_path, monkeypatch, capsys):
    root, checkpoint, _, result = run
    # the quantization is the fixture's; the check reports a drop of 2 points, measured (--strict-drop)
    monkeypatch.setattr(quantize, 'calibrated_graph', lambda *args, **kwargs: result['graph'])
    monkeypatch.setattr(quantize, 'compare', lambda *args: dict(count=100, reference=60., quantized=58., agreement=98.,
                                                                lost=2, gained=0))
    output = tmp_path / 'refused.pt2'
    args = _quantize_parser().parse_args([
        'quantize', '--checkpoint', str(checkpoint), '--val-images', str(root / 'digits' / 'val'),
        '--calibration-size', '4', '--max-drop', '1.5', '--workers', '0', '--output', str(output), '--strict-drop',
        '--no-tune'])
    assert run_reporting_errors('quantize', lambda: args.func(args)) == 1
    assert not output.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['cmtnet quantize: error: not written: the int8 top-1 is 2.00 points below fp32, more than '
                   '--max-drop 1.5']


def test_eval_and_predict_take_the_program_as_checkpoint(run, capsys):
    root, checkpoint, output, result = run
    data = root / 'digits'
    evaluated = eval_command(EvalOptions(checkpoint=str(output), compile=False, data=str(data), workers=0))
    assert evaluated['count'] == 20 and evaluated['top1'] == pytest.approx(result['quantized'])
    assert 'cmt_ti at 64px' in capsys.readouterr().out
    images = sorted((data / 'val').rglob('*.png'))[:3]
    predicted = predict_command(PredictOptions(checkpoint=str(output), compile=False, inputs=[str(p) for p in images],
                                               top_k=2))
    assert [p for p, _ in predicted] == images and all(label in CLASSES for _, top in predicted for label, _ in top)
    with pytest.raises(InputError, match='--precision bf16 does not apply'):
        eval_command(EvalOptions(checkpoint=str(output), precision='bf16', data=str(data)))


def test_a_service_runs_a_single_image_and_a_full_batch_unpadded(run):
    # a package compiled for a larger batch (as cmtnet quantize keeps one) would serve a single image padded
    from cmtnet.serve.command import ServeOptions
    from cmtnet.serve.handlers import load_handler
    handler = load_handler(ServeOptions(checkpoint=str(run[2]), max_batch_size=6))
    assert handler.info['precision'] == 'int8' and handler.model.own_sizes == {1, 6}


def test_eval_in_bf16_agrees_with_fp32(run):
    root, checkpoint, _, _ = run
    released = root / 'released.pth'
    loader = eval_loader(ReadableImages(build_dataset(root / 'digits', 'val', SIZE), eval_transform(SIZE)), 10,
                         workers=0)
    for path in (checkpoint, released):
        options = ModelOptions(checkpoint=str(path), model='cmt_ti', img_size=SIZE)
        fp32 = load_for_inference(options, torch.device('cpu'))['model']
        bf16 = load_for_inference(options.__class__(**{**vars(options), 'precision': 'bf16'}), torch.device('cpu'))
        assert compare(fp32, bf16['model'], loader)['agreement'] >= 90
    evaluated = eval_command(EvalOptions(checkpoint=str(released), model='cmt_ti', img_size=SIZE, precision='bf16',
                                         data=str(root / 'digits'), workers=0))
    assert evaluated['count'] == 20


def _quantize_args(root, checkpoint, output, *flags):
    return _quantize_parser().parse_args([
        'quantize', '--checkpoint', str(checkpoint), '--val-images', str(root / 'digits' / 'val'),
        '--calibration-size', '2', '--workers', '0', '--no-compile', '--output', str(output), *flags])


@pytest.mark.parametrize('counts, flags, written, said', [
    # ten points lost on 1000 images: the whole interval is above a point
    ((1000, 100, 0), [], False, 'more than --max-drop 1 and so is all of its 95% interval'),
    # one image flipped in 60: 1.67 points measured, which 60 images cannot tell from none
    ((60, 1, 0), [], True, '60 images are too few to decide --max-drop 1: the interval is wider than that; about'),
    ((60, 1, 0), ['--strict-drop'], False, 'is 1.67 points below fp32, more than --max-drop 1'),
])
def test_the_drop_is_refused_only_when_the_images_can_tell(run, tmp_path, monkeypatch, capsys, counts, flags,
                                                           written, said):
    root, checkpoint, _, result = run
    count, lost, gained = counts
    monkeypatch.setattr(quantize, 'calibrated_graph', lambda *args, **kwargs: result['graph'])
    monkeypatch.setattr(quantize, 'compare', lambda *args: dict(
        count=count, reference=90., quantized=90 - 100 * (lost - gained) / count, agreement=100 * (1 - lost / count),
        lost=lost, gained=gained))
    # whether the program is written, not what (the fixture's file is checked): an empty file where it is
    monkeypatch.setattr(quantize, 'save_quantized', lambda path, *args: Path(path).touch())
    output = tmp_path / 'q.pt2'
    args = _quantize_args(root, checkpoint, output, '--max-drop', '1', '--no-tune', *flags)
    assert run_reporting_errors('quantize', lambda: args.func(args)) == (0 if written else 1)
    assert output.exists() == written
    printed = capsys.readouterr()
    assert said in printed.out + printed.err
    assert re.search(r'drop \d+\.\d\d points, 95% interval \[-?\d+\.\d\d, \d+\.\d\d\]', printed.out)


def _float_weights(program):
    """How many convolutions and linears of `program` take a float weight rather than one dequantized from int8."""
    computing = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)
    return sum(1 for n in program.graph.nodes if n.target in computing and n.args[1].op == 'get_attr')


def test_tuning_returns_the_most_sensitive_ops_to_float_until_within_max_drop(run, tmp_path, monkeypatch, capsys):
    root, checkpoint, _, result = run
    monkeypatch.setattr(quantize, 'calibrated_graph', lambda *args, **kwargs: result['graph'])
    base = _float_weights(result['program'])

    def compare_needing_three_ops_in_float(reference, runnable, loader):  # 5 points lost until 3 are float
        drop = 0 if _float_weights(runnable.program) - base >= 3 else 5
        return dict(count=1000, reference=90., quantized=90. - drop, agreement=100. - drop, lost=10 * drop, gained=0)
    monkeypatch.setattr(quantize, 'compare', compare_needing_three_ops_in_float)
    # every run below ranks the same graph's ops on the same calibration images: the ranking is measured once
    measured = {}

    def sensitivities_measured_once(graph, reference, images, ops=None):
        if not measured:
            measured.update(images=images, scores=sensitivities(graph, reference, images, ops))
        assert graph is result['graph'] and ops is None and torch.equal(images, measured['images'])
        return measured['scores']
    monkeypatch.setattr(quantize, 'sensitivities', sensitivities_measured_once)
    output = tmp_path / 'tuned.pt2'
    args = _quantize_args(root, checkpoint, output, '--max-drop', '1')
    args.func(args)
    out = capsys.readouterr().out
    trials = re.findall(r'trial \d+: (\d+) op\(s\) in float: top-1 [\d.]+% \(drop ([\d.]+) points\)', out)
    assert trials == [('1', '5.00'), ('2', '5.00'), ('4', '0.00'), ('3', '0.00')]
    ranked = re.search(r'most sensitive: (.*)', out).group(1)
    most_sensitive = [re.sub(r' -?[\d.]+%$', '', part) for part in ranked.split(', ')]
    _, meta = load_quantized(output, compile=False)
    assert meta['float_ops'] == most_sensitive and f'left in float (3): {", ".join(most_sensitive)}' in out
    assert 'speed of the fallback not measured: --no-compile' in out
    model, _ = load_quantized(output, compile=False)
    assert _float_weights(model.program) == base + 3
    # too few trials to get there: the best of them is judged as without tuning
    args = _quantize_args(root, checkpoint, tmp_path / 'refused.pt2', '--max-drop', '1', '--max-trials', '2')
    assert run_reporting_errors('quantize', lambda: args.func(args)) == 1
    assert not (tmp_path / 'refused.pt2').exists() and 'none within --max-drop 1' in capsys.readouterr().out
    args = _quantize_args(root, checkpoint, tmp_path / 'untuned.pt2', '--max-drop', '1', '--no-tune')
    assert run_reporting_errors('quantize', lambda: args.func(args)) == 1
    assert 'trial' not in capsys.readouterr().out


def test_the_file_holds_int8_weights_and_is_small(run):
    _, checkpoint, output, _ = run
    assert output.stat().st_size <= 0.3 * checkpoint.stat().st_size
    model, _ = load_quantized(output, compile=False)
    tensors = [*model.program.parameters(), *model.program.buffers()]
    weights = [t for t in tensors if t.dim() == 4]
    assert len(weights) >= 100 and all(t.dtype == torch.int8 for t in weights)
    # the loaded program's tensors: the int8 weights and their scales, not the float weights beside them
    float_model = load_for_inference(ModelOptions(checkpoint=str(checkpoint)), torch.device('cpu'))['model']
    assert sum(t.nbytes for t in tensors) <= 0.3 * sum(t.nbytes for t in float_model.state_dict().values())


# a fresh process that loads one file and prints how much its peak memory grew (KiB). Both kinds of file are
# loaded in the same state: torch and cmtnet imported, and a tiny torch.export program saved and loaded once, so
# that what torch.export's loader imports the first time (its shape environment, aot_autograd: a cost of the
# process, paid once, not of the file) is not counted
_LOAD_PEAK = """
import io, resource, sys, torch, cmtnet
from cmtnet.classification.evaluate import load_for_inference
from cmtnet.classification.options import ModelOptions
from cmtnet.int8_program import is_quantized_file, load_quantized
class Tiny(torch.nn.Module):
    def forward(self, x):
        return x + 1
archive = io.BytesIO()
torch.export.save(torch.export.export(Tiny(), (torch.ones(2),)), archive)
archive.seek(0)
torch.export.load(archive).module()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if is_quantized_file(sys.argv[1]):
    load_quantized(sys.argv[1], compile=False)
else:
    load_for_inference(ModelOptions(checkpoint=sys.argv[1]), torch.device('cpu'))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def _load_peak(path) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(cmtnet.__file__).parents[1]),
                                                      os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, '-c', _LOAD_PEAK, str(path)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


def test_loading_the_program_takes_no_more_memory_than_the_float_model(run):
    _, checkpoint, output, _ = run
    assert _load_peak(output) <= _load_peak(checkpoint)
