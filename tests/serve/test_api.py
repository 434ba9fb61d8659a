"""`cmtnet serve` as a client meets it: a real server process, concurrent clients, bad uploads, a full queue,
clients that go away, an API key, and SIGTERM with requests in flight."""
import ast
import concurrent.futures
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import httpx
import pytest

from cmtnet.cli import main
from image_folders import decompression_bomb
from servers import CLASSES, classifier_checkpoint, photo, serving

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> List[Path]:
    root = tmp_path_factory.mktemp('images')
    return [photo(root / f'{i}.{"png" if i % 2 else "jpg"}', i, size=(40 + 4 * i, 64)) for i in range(8)]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    return classifier_checkpoint(tmp_path_factory.mktemp('weights') / 'model.safetensors')


@pytest.fixture(scope='module')
def server(checkpoint, tmp_path_factory):
    # a wide batch window, so that concurrent requests surely meet in one batch; small uploads only
    with serving(checkpoint, tmp_path_factory.mktemp('log') / 'serve.log', '--batch-timeout', '50',
                 '--max-upload-mb', '0.25') as s:
        yield s


def _predict_json(capsys, checkpoint: Path, files: List[Path], *flags: str) -> dict:
    capsys.readouterr()
    assert main(['predict', '--checkpoint', str(checkpoint), '--json', *flags, *map(str, files)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return {entry['image']: entry['predictions'] for entry in lines}


def _same_answer(served: list, printed: list) -> None:
    assert [p['label'] for p in served] == [p['label'] for p in printed]
    assert all(abs(a['score'] - b['score']) < 1e-5 for a, b in zip(served, printed))


def _batches(metrics: str) -> tuple:
    """(batches run, batches of one image) from the Prometheus text."""
    count = float(re.search(r'^cmtnet_batch_size_count (\S+)$', metrics, re.M).group(1))
    ones = float(re.search(r'^cmtnet_batch_size_bucket\{le="1\.0"\} (\S+)$', metrics, re.M).group(1))
    return count, ones


def test_64_concurrent_clients_get_what_predict_json_prints_in_shared_batches(server, checkpoint, files, capsys):
    printed = _predict_json(capsys, checkpoint, files)

    def ask(i: int) -> tuple:
        path = files[i % len(files)]
        with server.client() as c:
            if i % 2:  # the raw body, as the Hugging Face Inference API takes it
                kind = 'image/png' if path.suffix == '.png' else 'image/jpeg'
                r = c.post('/predict', content=path.read_bytes(), headers={'content-type': kind})
            else:
                r = c.post('/predict', files={'image': (path.name, path.read_bytes())})
        return path, r

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(ask, range(64)))
    assert [r.status_code for _, r in answers] == [200] * 64
    for path, r in answers:
        _same_answer(r.json(), printed[str(path)])
        assert len(r.json()) == len(CLASSES)
    count, ones = _batches(httpx.get(server.url + '/metrics').text)
    assert count < 64 and count > ones, 'concurrent requests should share forwards'


def test_top_k_and_the_bare_endpoints(server, files):
    with server.client() as c:
        r = c.post('/predict?top_k=2', files={'image': ('x.png', files[1].read_bytes())})
        assert r.status_code == 200 and len(r.json()) == 2
        assert r.json()[0]['score'] >= r.json()[1]['score']
        assert c.get('/health').json() == {'status': 'alive'}
        assert c.get('/ready').json()['status'] == 'ready'
        info = c.get('/info').json()
        assert info['task'] == 'image-classification' and info['labels'] == CLASSES and info['cam'] is True
        assert '/predict' in c.get('/openapi.json').json()['paths']
        assert c.get('/docs').status_code == 200
        page = c.get('/')
        assert page.status_code == 200 and 'unsafe-inline' not in page.headers['content-security-policy']
        assert page.headers['content-security-policy'].startswith("default-src 'self'")
        # without an icon of its own, a browser asks for /favicon.ico, and its console shows the 404
        assert re.search(r'<link rel="icon" href="/static/', page.text), 'the page names no icon'
        for url in re.findall(r'(?:href|src)="(/[^"]*)"', page.text):
            assert c.get(url).status_code == 200, f'the page links {url}, which the service does not serve'
        metrics = c.get('/metrics')
        assert metrics.headers['content-type'].startswith('text/plain')
        for name in ('cmtnet_requests_total{endpoint="/predict",status="200"}', 'cmtnet_request_seconds_bucket',
                     'cmtnet_batch_size_bucket', 'cmtnet_queue_depth'):
            assert name in metrics.text
        cam = c.post('/cam', files={'image': ('x.png', files[1].read_bytes())}).json()
        assert cam['label'] in CLASSES and cam['image'].startswith('data:image/png;base64,')


def _truncated(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:len(data) // 2]


def _bomb(tmp_path: Path) -> bytes:
    return decompression_bomb(tmp_path / 'bomb.png').read_bytes()


BAD = {
    # case: (request keywords, expected status, a word the message must hold)
    'not an image': (lambda f, t: dict(files={'image': ('x.png', b'just some text, no pixels')}), 400, 'not an image'),
    'truncated': (lambda f, t: dict(files={'image': ('x.png', _truncated(f[1]))}), 400, 'truncated'),
    'empty': (lambda f, t: dict(files={'image': ('x.png', b'')}), 400, 'empty'),
    'empty raw body': (lambda f, t: dict(content=b'', headers={'content-type': 'image/png'}), 400, 'empty'),
    'decompression bomb': (lambda f, t: dict(files={'image': ('bomb.png', _bomb(t))}), 413, '900000000 pixels'),
    'over the upload limit': (lambda f, t: dict(files={'image': ('big.png', b'\0' * 400_000)}), 413, 'limit'),
    'misnamed field': (lambda f, t: dict(files={'file': ('x.png', f[1].read_bytes())}), 422, "'image'"),
    'no field': (lambda f, t: dict(files={'note': (None, 'hi')}), 422, "'image'"),
    'text field': (lambda f, t: dict(files={'image': (None, 'not a file')}), 422, 'file'),
    'a form, not multipart': (lambda f, t: dict(data={'image': 'x'}), 415, 'multipart'),
    'wrong content type': (lambda f, t: dict(content=b'abc', headers={'content-type': 'text/plain'}), 415, 'image/'),
    'bad top_k': (lambda f, t: dict(params={'top_k': 'two'}, files={'image': ('x.png', f[1].read_bytes())}), 400,
                  'top_k'),
    'unknown parameter': (lambda f, t: dict(params={'topk': '2'}, files={'image': ('x.png', f[1].read_bytes())}),
                          400, 'topk'),
}


@pytest.mark.parametrize('case', list(BAD))
def test_a_bad_upload_gets_a_4xx_that_names_it_and_the_next_request_is_served(server, files, tmp_path, case):
    make, status, word = BAD[case]
    with server.client() as c:
        r = c.post('/predict', **make(files, tmp_path))
        assert r.status_code == status, r.text
        error = r.json()['error']
        assert set(r.json()) == {'error'} and '\n' not in error and word in error
        good = c.post('/predict', files={'image': ('x.png', files[1].read_bytes())})
        assert good.status_code == 200 and len(good.json()) == len(CLASSES)
    assert server.process.poll() is None


def test_an_unknown_path_is_a_json_404(server):
    r = httpx.get(server.url + '/nothing/here')
    assert r.status_code == 404 and 'no such endpoint' in r.json()['error']


def _raw_request(url: str, body: bytes, declared: int) -> socket.socket:
    host, port = url.removeprefix('http://').split(':')
    s = socket.create_connection((host, int(port)))
    s.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n'
              b'Content-Length: %d\r\n\r\n' % declared + body)
    return s


def test_clients_that_go_away_do_not_hold_up_the_others(server, files):
    data = files[1].read_bytes()
    # one client leaves mid-upload, one right after sending a whole request
    _raw_request(server.url, data[:100], len(data)).close()
    _raw_request(server.url, data, len(data)).close()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        start = time.monotonic()
        answers = list(pool.map(lambda _: httpx.post(server.url + '/predict', files={'image': ('x.png', data)},
                                                     timeout=60), range(8)))
    assert [r.status_code for r in answers] == [200] * 8
    assert time.monotonic() - start < 30
    time.sleep(0.5)
    depth = float(re.search(r'^cmtnet_queue_depth (\S+)$', httpx.get(server.url + '/metrics').text, re.M).group(1))
    assert depth == 0, 'nothing is left waiting in the queue'


def test_past_max_queue_the_answer_is_503_with_retry_after_and_then_it_serves(checkpoint, files, tmp_path):
    data = files[1].read_bytes()
    with serving(checkpoint, tmp_path / 'serve.log', '--max-queue', '2', '--max-batch-size', '1') as server:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: httpx.post(server.url + '/predict', files={'image': ('x.png', data)},
                                                         timeout=60), range(24)))
        codes = [r.status_code for r in answers]
        assert set(codes) == {200, 503}, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert int(busy.headers['retry-after']) >= 1 and 'busy' in busy.json()['error']
        assert httpx.post(server.url + '/predict', files={'image': ('x.png', data)}).status_code == 200


def test_with_an_api_key_predict_needs_it_health_does_not_and_the_log_never_shows_it(checkpoint, files, tmp_path):
    key = 'k3y-that-must-not-leak'
    with serving(checkpoint, tmp_path / 'serve.log', env={'CMTNET_API_KEY': key}) as server:
        image = {'image': ('x.png', files[1].read_bytes())}
        with server.client() as c:
            assert c.post('/predict', files=image).status_code == 401
            wrong = c.post('/predict', files=image, headers={'authorization': 'Bearer nope'})
            assert wrong.status_code == 401 and 'API key' in wrong.json()['error']
            assert c.get('/info').status_code == 401
            assert c.get('/health').status_code == 200
            good = c.post('/predict', files=image, headers={'authorization': f'Bearer {key}'})
            assert good.status_code == 200 and good.json()[0]['label'] in CLASSES
        log = server.log
    assert key not in log and 'API key required' in log


def test_sigterm_answers_the_requests_in_flight_then_exits_0(checkpoint, files, tmp_path):
    data = files[1].read_bytes()
    with serving(checkpoint, tmp_path / 'serve.log', '--batch-timeout', '1500') as server:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(httpx.post, server.url + '/predict', files={'image': ('x.png', data)},
                                   timeout=60) for _ in range(3)]
            time.sleep(0.5)  # the three wait in the batch window
            server.process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in pending]
        assert [r.status_code for r in answers] == [200] * 3
        assert server.process.wait(60) == 0


def test_the_readme_client_gets_the_top_classes(server, files, tmp_path):
    from markdown_blocks import ROOT, blocks
    [client] = [b for b in blocks(ROOT / 'README.md') if b.lang == 'python' and '/predict' in b.code]
    (tmp_path / 'digit.png').write_bytes(files[1].read_bytes())
    code = client.code.replace('http://127.0.0.1:8000', server.url)
    out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shown = ast.literal_eval(out.stdout.strip())  # the printed list of dicts
    assert [d['label'] for d in shown] == [d['label'] for d in httpx.post(
        server.url + '/predict?top_k=3', files={'image': ('d.png', files[1].read_bytes())}).json()]
