"""Served throughput and latency over HTTP against the bare model, measured in one run.

    python benchmarks/serve_load.py                          # CMT-S at 224, fp32 and bf16, concurrency 1 4 16 64
    python benchmarks/serve_load.py --model cmt_ti --img-size 160 --precision fp32 --seconds 10

For each precision, first the bare model: the very model the service runs (`serve.handlers.load_handler`,
prepared as `cmtnet serve` prepares it), timed in this process on a batch of --max-batch-size and on a
batch of one, in interleaved rounds (`cmtnet bench`'s timer). Then a `cmtnet serve` process of the same
weights answers --seconds of requests at each concurrency: that many clients, each sending its next request
when the previous one is answered (a raw JPEG body, 256x256, of a photo that scikit-image ships). The clients
are coroutines on one thread that send prepared request bytes, so that the load costs the cores the server
shares as little as it can.

`--compare-litserve` also serves the same handler from a LitServe server (its batching, its worker
process) and loads both servers with multipart uploads (what LitServe takes), at the lowest and highest
concurrency: the measurement behind serving on FastAPI and uvicorn directly (docs/serve.md).

The targets: at concurrency 64, served images/s at least 0.85x the bare model's at --max-batch-size; at
concurrency 1, the median latency at most the bare batch-1 latency + 15 ms. The weights are random (the
speed does not depend on them) unless --checkpoint is given.
"""
import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import httpx
import timm
import torch
from PIL import Image

from cmtnet.analysis.speed import interleaved, machine, torch_threads
from cmtnet.checkpoints import export_weights
from cmtnet.serve.command import ServeOptions
from cmtnet.serve.handlers import Params, load_handler
from cmtnet.serve.uploads import decode_image

try:
    import litserve as ls
except ImportError:  # --compare-litserve says so
    ls = None

HERE = Path(__file__).resolve().parent


def payload(side: int = 256) -> bytes:
    from skimage import data
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((side, side), Image.BICUBIC).save(buffer, format='JPEG', quality=90)
    return buffer.getvalue()


def bare(options: ServeOptions, image: bytes, rounds: int, threads: int) -> Tuple[float, float]:
    """(images/s at --max-batch-size, seconds for one image) of the service's own model, without HTTP."""
    handler = load_handler(options)
    prepared = handler.prepare(Image.open(io.BytesIO(image)).convert('RGB'))
    batch = [(prepared, Params())] * options.max_batch_size
    with torch_threads(threads), torch.inference_mode():
        _, times = interleaved({'batch': lambda: handler.run_prepared(batch),
                                'one': lambda: handler.run_prepared(batch[:1])},
                               warmup=2, rounds=rounds)
    return options.max_batch_size / statistics.median(times['batch']), statistics.median(times['one'])


def load(port: int, image: bytes, concurrency: int, seconds: float,
         content_type: str = 'image/jpeg') -> Tuple[float, List[float], Dict[int, int]]:
    """(answered requests/s, latencies in s, count by status) of `concurrency` closed-loop clients.

    The clients are coroutines on one thread, each on its own keep-alive connection, sending the same
    request bytes (built once) and reading the answer's status line, headers and body: the HTTP requests a
    client sends, with as little of the client's own work as possible on the cores the server shares."""
    request = (f'POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n'
               f'Content-Length: {len(image)}\r\n\r\n').encode() + image
    return asyncio.run(_load(port, request, concurrency, seconds))


async def _load(port: int, request: bytes, concurrency: int,
                seconds: float) -> Tuple[float, List[float], Dict[int, int]]:
    latencies: List[float] = []
    statuses: Dict[int, int] = {}
    stop = time.monotonic() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        try:
            while time.monotonic() < stop:
                start = time.perf_counter()
                writer.write(request)
                status, length = _head(await reader.readuntil(b'\r\n\r\n'))
                await reader.readexactly(length)
                took = time.perf_counter() - start
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(took)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - began), latencies, statuses


def _head(head: bytes) -> Tuple[int, int]:
    """(status, Content-Length) of an answer's head."""
    lines = head.decode('latin-1').split('\r\n')
    for line in lines[1:]:
        name, _, value = line.partition(':')
        if name.strip().lower() == 'content-length':
            return int(lines[0].split()[1]), int(value)
    raise RuntimeError(f'an answer without Content-Length: {lines[0]}')


def run_litserve(port: int, checkpoint: str, precision: str, max_batch_size: int) -> None:
    """A LitServe server of the service's handler (the comparison of --compare-litserve)."""
    server = ls.LitServer(LitHandler(checkpoint, precision, max_batch_size), accelerator='cpu',
                          workers_per_device=1, timeout=600)
    server.run(host='127.0.0.1', port=port, generate_client_file=False)


if ls is not None:  # the serve-compare extra; defined here, where LitServe's worker process finds it by name
    class LitHandler(ls.LitAPI):
        """`cmtnet serve`'s handler as a LitServe API: LitServe decodes the form, batches and runs it in its
        worker process."""

        def __init__(self, checkpoint: str, precision: str, max_batch_size: int):
            super().__init__(max_batch_size=max_batch_size, batch_timeout=0.005)
            self.options = ServeOptions(checkpoint=checkpoint, precision=precision, max_batch_size=max_batch_size)

        def setup(self, device: str) -> None:
            self.handler = load_handler(self.options)
            self.handler.warm_up()

        def decode_request(self, request):
            image, _ = decode_image(request['image'].file.read())
            return image

        def batch(self, inputs):
            return list(inputs)

        def predict(self, images):
            return self.handler.run([(image, Params()) for image in images])

        def unbatch(self, output):
            return output

        def encode_response(self, output):
            return output


def multipart(image: bytes) -> Tuple[bytes, str]:
    boundary = 'cmtnetboundary'
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
            f'Content-Type: image/jpeg\r\n\r\n').encode() + image + f'\r\n--{boundary}--\r\n'.encode()
    return body, f'multipart/form-data; boundary={boundary}'


def percentile(values: List[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method='inclusive')[q - 1] if len(values) > 1 else values[0]


def serve(checkpoint: str, precision: str, port: int, max_batch_size: int, log: Path,
          litserve: bool = False) -> subprocess.Popen:
    if litserve:
        argv = [sys.executable, __file__, '--litserve-server', str(port), checkpoint, precision, str(max_batch_size)]
    else:
        argv = [sys.executable, '-m', 'cmtnet', 'serve', '--checkpoint', checkpoint, '--precision', precision,
                '--port', str(port), '--max-batch-size', str(max_batch_size), '--max-queue', '1024']
    process = subprocess.Popen(argv, stdout=open(log, 'wb'), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'the server exited: {log.read_text()}')
        try:
            if httpx.get(f'http://127.0.0.1:{port}/{"health" if litserve else "ready"}', timeout=5).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError('cmtnet serve was not ready in 10 minutes')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='cmt_s')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--checkpoint', help='weights to serve (default: random weights of --model)')
    parser.add_argument('--precision', nargs='+', default=['fp32', 'bf16'])
    parser.add_argument('--concurrency', type=int, nargs='+', default=[1, 4, 16, 64])
    parser.add_argument('--seconds', type=float, default=30.0, help='load per concurrency')
    parser.add_argument('--max-batch-size', type=int, default=16)
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds of the bare model')
    parser.add_argument('--threads', type=int, default=0, help='torch threads of the bare model (0: torch\'s)')
    parser.add_argument('--port', type=int, default=0, help='port of the servers (0: a free one)')
    parser.add_argument('--compare-litserve', action='store_true', help='also load a LitServe server of the '
                        'same handler, both with multipart uploads')
    parser.add_argument('--litserve-server', nargs=4, metavar=('PORT', 'CHECKPOINT', 'PRECISION', 'BATCH'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.compare_litserve or args.litserve_server) and ls is None:
        parser.error("--compare-litserve needs LitServe: pip install -c constraints.txt -e '.[serve-compare]'")
    if args.litserve_server:
        port, checkpoint, precision, batch = args.litserve_server
        return run_litserve(int(port), checkpoint, precision, int(batch))

    if not args.port:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            args.port = s.getsockname()[1]
    image = payload()
    print(f'# {machine(args.threads)}; payload: a {len(image)}-byte 256x256 JPEG; {args.seconds:g} s per row')
    with tempfile.TemporaryDirectory() as work:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = os.path.join(work, f'{args.model}.safetensors')
            model = timm.create_model(args.model, img_size=args.img_size)
            export_weights(checkpoint, model.state_dict(), dict(model=args.model, img_size=args.img_size,
                                                                num_classes=1000, crop_pct=0.875,
                                                                interpolation='bicubic'))
        print('| precision | concurrency | served img/s | p50 ms | p95 ms | p99 ms | 503s | bare batch '
              f'{args.max_batch_size} img/s | bare batch-1 ms | target | met |')
        print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|')
        for precision in args.precision:
            options = ServeOptions(checkpoint=checkpoint, precision=precision, max_batch_size=args.max_batch_size)
            bare_rate, bare_one = bare(options, image, args.rounds, args.threads)
            process = serve(checkpoint, precision, args.port, args.max_batch_size, Path(work) / f'{precision}.log')
            try:
                load(args.port, image, min(args.concurrency), 3.0)  # warm the connections and the threads
                for concurrency in args.concurrency:
                    rate, latencies, statuses = load(args.port, image, concurrency, args.seconds)
                    p50, p95, p99 = (1000 * percentile(latencies, q) for q in (50, 95, 99))
                    target, met = '', ''
                    if concurrency == 64:
                        target, met = f'>= {0.85 * bare_rate:.1f} img/s', 'yes' if rate >= 0.85 * bare_rate else 'no'
                    elif concurrency == 1:
                        limit = 1000 * bare_one + 15
                        target, met = f'p50 <= {limit:.1f} ms', 'yes' if p50 <= limit else 'no'
                    refused = sum(n for s, n in statuses.items() if s != 200)
                    print(f'| {precision} | {concurrency} | {rate:.2f} | {p50:.1f} | {p95:.1f} | {p99:.1f} | '
                          f'{refused} | {bare_rate:.2f} | {1000 * bare_one:.1f} | {target} | {met} |', flush=True)
            finally:
                stop(process)
            if args.compare_litserve:
                compare_litserve(args, checkpoint, precision, image, Path(work))


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server and the worker processes it started."""
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(120)


def compare_litserve(args: argparse.Namespace, checkpoint: str, precision: str, image: bytes, work: Path) -> None:
    body, kind = multipart(image)
    print(f'\n| precision | server | concurrency | img/s | p50 ms | p95 ms | refused |\n|---|---|---:|---:|---:|---:|---:|')
    for name, litserve in (('cmtnet serve', False), ('LitServe', True)):
        process = serve(checkpoint, precision, args.port, args.max_batch_size, work / f'{name}.log', litserve)
        try:
            load(args.port, body, 1, 3.0, kind)
            for concurrency in (min(args.concurrency), max(args.concurrency)):
                rate, latencies, statuses = load(args.port, body, concurrency, args.seconds, kind)
                p50, p95 = (1000 * percentile(latencies, q) for q in (50, 95))
                print(f'| {precision} | {name}, multipart | {concurrency} | {rate:.2f} | {p50:.1f} | {p95:.1f} | '
                      f'{sum(n for s, n in statuses.items() if s != 200)} |', flush=True)
        finally:
            stop(process)


if __name__ == '__main__':
    main()
