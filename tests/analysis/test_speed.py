"""The benchmark library: interleaved timing, options that name bad values, a tiny end-to-end run."""
import pytest
import torch

from cmtnet.analysis.speed import (
    CMT_PATHS, PEER_PATHS, BenchOptions, bench_table, build_step, interleaved, peak_memory, run_bench,
)
from cmtnet.cli import main
from cmtnet.errors import InputError
from cmtnet.models.variants import PUBLISHED


def test_interleaved_warms_up_then_takes_turns():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ('a', 'b', 'c')}
    warm, times = interleaved(steps, warmup=2, rounds=3)
    assert calls == ['a', 'a', 'b', 'b', 'c', 'c'] + ['a', 'b', 'c'] * 3
    assert set(warm) == set(times) == {'a', 'b', 'c'} and all(len(t) == 3 for t in times.values())


def test_with_failures_given_a_failing_step_loses_its_row_only():
    calls = []

    def step(name, fail_at=None):
        def run():
            calls.append(name)
            if len([c for c in calls if c == name]) == fail_at:
                raise RuntimeError(f'{name} broke\nsecond line')
        return run
    steps = {'a': step('a'), 'b': step('b', fail_at=2), 'c': step('c', fail_at=1)}
    failures = {}
    warm, times = interleaved(steps, warmup=1, rounds=3, failures=failures)
    # c fails at its warm-up, b in the first round: neither is called again
    assert calls == ['a', 'b', 'c'] + ['a', 'b'] + ['a'] * 2
    assert set(times) == {'a'} and len(times['a']) == 3 and set(warm) == {'a', 'b'}
    assert failures == {'b': 'RuntimeError: b broke', 'c': 'RuntimeError: c broke'}
    calls.clear()
    with pytest.raises(RuntimeError, match='a broke'):  # without `failures`, the error propagates
        interleaved({'a': step('a', fail_at=1)}, warmup=0, rounds=1)


def test_the_bench_command_reports_a_step_that_fails_to_build_and_exits_1(monkeypatch, capsys):
    from cmtnet.analysis import speed
    real = speed.build_step

    def build(name, path, precision, *args):
        if path == 'fused':
            raise RuntimeError('the compiler cannot take it')
        return real(name, path, precision, *args)
    monkeypatch.setattr(speed, 'build_step', build)
    argv = ['bench', '--models', 'cmt_ti', '--paths', 'eager', 'fused', '--baseline', 'cmt_ti:eager',
            '--batch-size', '1', '--warmup', '0', '--rounds', '1']
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert '| cmt_ti | eager | fp32 | 160 |' in out and '| cmt_ti | fused |' not in out
    assert 'cmt_ti:fused:fp32: RuntimeError: the compiler cannot take it' in err.splitlines()


@pytest.mark.parametrize('kwargs, bad', [
    (dict(paths=['warp']), "'warp'"), (dict(models=['no_such_net']), "'no_such_net'"),
    (dict(baseline='cmt_s'), "'cmt_s'"), (dict(rounds=0), '0'),
    (dict(device='cuda', paths=['onnxruntime']), 'cuda'), (dict(precision=['fp16']), "'fp16'"),
    (dict(device='cuda', precision=['int8']), 'int8'), (dict(baseline='a:b:c:d'), "'a:b:c:d'")])
def test_bad_options_name_the_value(kwargs, bad):
    with pytest.raises(InputError, match=bad):
        BenchOptions(**kwargs)


def test_tiny_run_reports_every_path_against_the_baseline():
    options = BenchOptions(models=['cmt_ti'], paths=['eager', 'fused_cl', 'compiled'], baseline='cmt_ti:eager',
                           batch_size=1, warmup=0, rounds=2)
    results = run_bench(options, log=lambda msg: None)
    assert [(r.model, r.path) for r in results] == [('cmt_ti', 'eager'), ('cmt_ti', 'fused_cl')]  # 'compiled': peers
    assert all(r.img_size == 160 and len(r.seconds) == 2 and r.images_per_second > 0 for r in results)
    assert 0.6 < results[0].gmacs < 0.7  # cmt_ti at 160: 0.65 GMACs
    table = bench_table(results, options).splitlines()
    assert len(table) == 4 and '| cmt_ti | eager | fp32 | 160 |' in table[2] and '| 1.00x |' in table[2]


def test_each_path_runs_at_each_precision_that_applies_to_it():
    options = BenchOptions(models=['cmt_ti'], paths=['eager', 'fused_cl', 'onnxruntime'],
                           precision=['fp32', 'bf16', 'int8'], baseline='cmt_ti:fused_cl:bf16', batch_size=1, warmup=0,
                           rounds=1)
    results = run_bench(options, log=lambda msg: None)
    # bf16 for every path but onnxruntime; int8 for compiled paths only
    assert [r.key for r in results] == [
        'cmt_ti:eager:fp32', 'cmt_ti:eager:bf16', 'cmt_ti:fused_cl:fp32', 'cmt_ti:fused_cl:bf16',
        'cmt_ti:onnxruntime:fp32']
    table = bench_table(results, options, {'bf16': 1e9})
    assert '| cmt_ti | fused_cl | bf16 | 160 |' in table and '| 1.00x |' in table.splitlines()[5]


def test_a_bf16_step_runs_the_weights_in_bfloat16(monkeypatch, tmp_path):
    seen = []
    import cmtnet.models.onednn as onednn
    real = onednn.OneDNNConv._onednn
    monkeypatch.setattr(onednn.OneDNNConv, '_onednn',
                        lambda self, x, r, **kw: seen.append(x.dtype) or real(self, x, r, **kw))
    step = build_step('cmt_ti', 'fused_cl', 'bf16', 1, torch.device('cpu'), str(tmp_path), 0)
    assert step().dtype == torch.bfloat16
    assert seen and set(seen) == {torch.bfloat16}  # the fast path, in bfloat16


def test_peak_memory_is_measured_in_a_process_of_its_own():
    weights_mib = PUBLISHED['cmt_ti'].released_params * 4 / 2 ** 20  # cmt_ti's parameters in fp32
    # the child's own figure: the weights and a batch's activations, not this test process's memory
    assert weights_mib < peak_memory('cmt_ti', 'eager', 4) < 1024


def test_bench_command_prints_the_table_and_draws_the_chart(tmp_path, capsys):
    chart = tmp_path / 'speed.png'
    argv = ['bench', '--models', 'cmt_ti', '--paths', 'eager', 'fused', '--baseline', 'cmt_ti:fused',
            '--batch-size', '1', '--warmup', '0', '--rounds', '1', '--chart', str(chart)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert '| cmt_ti | fused | fp32 | 160 |' in out and 'baseline cmt_ti:fused:fp32' in out
    assert chart.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_baseline_is_cmt_s_eager_where_measured_else_the_first_model_and_path_asked_for():
    assert BenchOptions().baseline == BenchOptions(models=['resnet50', 'cmt_s']).baseline == 'cmt_s:eager:fp32'
    assert BenchOptions(models=['cmt_ti'], paths=['fused', 'eager']).baseline == 'cmt_ti:fused:fp32'
    assert BenchOptions(models=['resnet50'], precision=['bf16']).baseline == 'resnet50:eager:bf16'
    assert BenchOptions(models=['cmt_ti'], baseline='cmt_ti:fused').baseline == 'cmt_ti:fused:fp32'  # as given


def test_bench_of_another_model_has_ratios_to_its_first_path(capsys):
    assert main(['bench', '--models', 'cmt_ti', '--paths', 'eager', 'fused', '--batch-size', '1', '--warmup', '0',
                 '--rounds', '1']) == 0
    out = capsys.readouterr().out
    assert 'baseline cmt_ti:eager:fp32' in out
    rows = [line.split('|') for line in out.splitlines() if line.startswith('| cmt_ti |')]
    assert len(rows) == 2 and rows[0][7].strip() == '1.00x' and rows[1][7].strip().endswith('x')


def test_the_default_paths_name_each_mode_once():
    paths = BenchOptions().paths
    assert len(paths) == len(set(paths)) and set(paths) == set(CMT_PATHS) | set(PEER_PATHS)


def test_a_compiled_step_freezes_for_its_own_calls_only(monkeypatch, tmp_path):
    import torch._inductor.config as inductor
    seen = []

    def compile_later(model, **kwargs):  # as torch.compile: the compile happens at the first call
        def compiled(x):
            seen.append(inductor.freezing)
            return model(x)
        return compiled

    monkeypatch.setattr(torch, 'compile', compile_later)
    before = inductor.freezing
    step = build_step('cmt_ti', 'fused_compiled', 'fp32', 1, torch.device('cpu'), str(tmp_path), 0)
    assert inductor.freezing == before
    step()
    assert seen == [True] and inductor.freezing == before


def test_the_runs_threads_are_restored_after_it():
    before = torch.get_num_threads()
    seen = []
    options = BenchOptions(models=['cmt_ti'], paths=['eager'], baseline='cmt_ti:eager', batch_size=1, warmup=0,
                           rounds=1, threads=before + 1)
    run_bench(options, log=lambda msg: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {before + 1}
    assert torch.get_num_threads() == before


def test_an_int8_step_quantizes_the_model_as_its_path_folds_it(tmp_path, monkeypatch):
    # timm's FastViT is reparameterized for the compiled path (68 convs become 52), and its RepMixer takes no
    # second pass. The step is built (quantized), not run: compiling it to int8 kernels takes minutes.
    from cmtnet.deploy import quantize
    real, programs = quantize.quantize_model, []
    monkeypatch.setattr(quantize, 'quantize_model', lambda *a, **k: programs.append(real(*a, **k)) or programs[-1])
    build_step('fastvit_t8', 'compiled', 'int8', 1, torch.device('cpu'), str(tmp_path), 0)
    convs = [n for n in programs[0].graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert len(convs) == 52


def test_the_bench_command_asks_onednn_for_room_for_every_steps_kernels_and_the_library_does_not(monkeypatch,
                                                                                                   capsys):
    from cmtnet.analysis.speed import PRIMITIVE_CACHE, roomy_primitive_cache
    import os
    monkeypatch.delenv('ONEDNN_PRIMITIVE_CACHE_CAPACITY', raising=False)
    run_bench(BenchOptions(models=['cmt_ti'], paths=['eager'], baseline='cmt_ti:eager', batch_size=1, warmup=0,
                           rounds=1), log=lambda msg: None)
    assert 'ONEDNN_PRIMITIVE_CACHE_CAPACITY' not in os.environ  # the library leaves the environment alone
    assert main(['bench', '--models', 'cmt_ti', '--paths', 'eager', '--baseline', 'cmt_ti:eager', '--batch-size',
                 '1', '--warmup', '0', '--rounds', '1', '--peak-gflops', '1']) == 0
    capsys.readouterr()
    # the command's entry point sets it: CMT-S alone builds about 100 primitives; oneDNN's default cache holds 1,024
    assert int(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']) == PRIMITIVE_CACHE >= 10_000
    monkeypatch.setenv('ONEDNN_PRIMITIVE_CACHE_CAPACITY', '64')  # the user's own setting stays
    roomy_primitive_cache()
    assert os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'] == '64'
