"""One model serving several threads at once: the per-grid position-bias cache (models/grid_cache.py) and
the CPU fast path's packed weights (models/onednn.py) change during forward, so they must be safe to share.
Each thread's logits must equal those of a single-threaded run on the same inputs."""
import sys
import threading

import pytest
import timm
import torch
from timm.utils import reparameterize_model

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.models import cpu_fast_path
from cmtnet.models.grid_cache import GridCache
from cmtnet.models.onednn import OneDNNConv
from norms import randomise_norms, rel_err

THREADS = 4
ITERATIONS = 6


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise_norms(timm.create_model('cmt_ti', depths=(1, 1, 1, 1), dynamic_img_size=True)).eval()


def _inputs(sizes):
    """Per thread, a list of inputs: sizes alternated, and a batch of its own (so that every conv sees more
    input shapes than it keeps packed weights for, and every stage more grids than its cache keeps)."""
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(1 + t, 3, sizes[(t + i) % len(sizes)], sizes[(t + i) % len(sizes)], generator=g)
             for i in range(ITERATIONS)] for t in range(THREADS)]


def _in_threads(work):
    """`work(t)` for t in 0..THREADS-1, all at once: their results, after asserting that none raised."""
    results, errors = [None] * THREADS, []
    start = threading.Barrier(THREADS)

    def run(t):
        try:
            start.wait()
            with torch.no_grad():
                results[t] = work(t)
        except Exception as e:  # noqa: BLE001  (reported below, with its thread)
            errors.append(f'thread {t}: {type(e).__name__}: {e}')

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up in a few iterations
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    return results


@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'unfused at other sizes'])
def test_one_model_serves_four_threads(fused):
    model = _model()
    if fused:  # the packed weights of the CPU fast path's convs (and the bias cache: not the native size)
        model, sizes = cpu_fast_path(reparameterize_model(model)), (64, 96)
    else:  # the position-bias cache, with more grids than it keeps
        sizes = (64, 96, 128, 192)
    inputs = _inputs(sizes)
    got = _in_threads(lambda t: [model(x) for x in inputs[t]])
    with torch.no_grad():
        for t in range(THREADS):
            for x, out in zip(inputs[t], got[t]):
                assert rel_err(out, model(x)) <= 1e-6


# the two shared structures alone, called far more often than a model's forward calls them, in a few rounds
# (a race that a forward hits rarely shows here within a second or two)
CALLS = 2500
ROUNDS = 4


@pytest.mark.parametrize('round_', range(ROUNDS))
def test_grid_cache_serves_four_threads(round_):
    cache, source = GridCache(max_entries=1), torch.arange(3.)

    def work(t):
        return [(key, cache.get(key, (source,), lambda: source + key))
                for key in ((t + i) % 3 for i in range(CALLS))]  # more keys than entries: evictions

    for results in _in_threads(work):
        assert all(torch.equal(value, source + key) for key, value in results)
    assert len(cache) <= 1


@pytest.mark.parametrize('round_', range(2))
def test_packed_weights_serve_four_threads(round_):
    conv = OneDNNConv(torch.nn.Conv2d(4, 4, 1))

    def work(t):
        kept = []
        for i in range(CALLS):
            conv.packed_weight((1 + (t + i) % 5, 4, 2, 2))  # more shapes than kept: evictions
            kept.append(len(conv._packed))
        return max(kept)

    assert max(_in_threads(work)) <= conv.shapes_kept
