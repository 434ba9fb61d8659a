"""The HTTP API of `cmtnet serve`, on FastAPI: predictions, activation maps, health, metrics, the page.

    POST /predict      one image (form field `image`, or a raw image/* body) -> the task's JSON
                       (Hugging Face Inference API); ?top_k= (classification), ?threshold= (detection)
    POST /cam          one image -> its top class's Grad-CAM overlay, {"image": "data:image/png;base64,..."}
    GET  /info         task, model, labels, precision, whether activation maps can be drawn
    GET  /health       alive;  GET /ready: the model is loaded and warmed up (503 until then)
    GET  /metrics      Prometheus text;  GET /docs: OpenAPI;  GET /: the page

Whatever the client sent wrong is answered 4xx with a one-line JSON `{"error": "..."}` that names it, and
the service goes on; a full queue is 503 with Retry-After. With an API key, /predict, /cam and /info
take `Authorization: Bearer KEY`; the key is compared in constant time and never logged.
"""
import asyncio
import hmac
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InputError
from .batching import Batcher, QueueFull, Ticket
from .handlers import Handler, Params
from .metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from .uploads import UploadError, decode_image, read_upload

__all__ = ['Limits', 'Service', 'create_app']

_logger = logging.getLogger('cmtnet.serve')
_STATIC = resources.files('cmtnet.serve') / 'static'


@dataclass(frozen=True)
class Limits:
    """How much the service takes: batch size, batch wait (seconds), queue, upload size (bytes)."""
    max_batch_size: int = 16
    batch_timeout: float = 0.005
    max_queue: int = 256
    max_upload: int = 20 * 2 ** 20
    api_key: Optional[str] = None


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status, headers=headers)


def _params(request: Request) -> Params:
    query = request.query_params
    unknown = sorted(set(query) - {'top_k', 'threshold'})
    if unknown:
        raise UploadError(400, f'unknown query parameter {unknown[0]!r}; expected top_k or threshold')
    try:
        top_k = int(query.get('top_k', 5))
    except ValueError:
        raise UploadError(400, f'top_k must be a whole number, got {query["top_k"]!r}') from None
    try:
        threshold = float(query.get('threshold', 0.5))
    except ValueError:
        raise UploadError(400, f'threshold must be a number, got {query["threshold"]!r}') from None
    if top_k < 1:
        raise UploadError(400, f'top_k must be at least 1, got {top_k}')
    if not 0 <= threshold <= 1:
        raise UploadError(400, f'threshold must be in [0, 1], got {threshold}')
    return Params(top_k, threshold)


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())['type'] != 'http.disconnect':
        pass


class Service:
    """The endpoints of one handler within its limits; `create_app` routes them. `model_thread`: the thread the
    handler was loaded on, which runs its batches too (`batching.model_thread`)."""

    def __init__(self, handler: Handler, limits: Limits, model_thread: Optional[ThreadPoolExecutor] = None):
        self.handler = handler
        self.limits = limits
        self.model_thread = model_thread
        self.ready = False
        self.batcher: Optional[Batcher] = None
        self.metrics = ServiceMetrics(lambda: self.batcher.waiting if self.batcher else 0)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """The batching loop runs while the app does; the model warms up behind it (/ready waits for that)."""
        self.batcher = Batcher(self.handler.run, self.limits.max_batch_size, self.limits.batch_timeout,
                               self.limits.max_queue, self.metrics.observe_batch, self.model_thread)
        self.batcher.start()
        warming = asyncio.get_running_loop().create_task(self._warm_up())
        try:
            yield
        finally:
            warming.cancel()
            await self.batcher.stop()

    async def _warm_up(self) -> None:
        await self.batcher.call(self.handler.warm_up)
        self.ready = True
        _logger.info('ready: %s warmed up', self.handler.info['model'])

    async def count(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """`app` on one request, its answer counted by endpoint and status (500 if it raised before answering),
        /predict and /cam timed; an ASGI middleware, which adds no task or stream of its own to a request."""
        if scope['type'] != 'http':
            return await app(scope, receive, send)
        start = time.perf_counter()
        route = scope['path'] if scope['path'] in _ROUTES else 'other'
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message['type'] == 'http.response.start':
                status = message['status']
            await send(message)

        try:
            await app(scope, receive, counted)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            if route in ('/predict', '/cam'):
                self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _authorised(self, request: Request) -> bool:
        if self.limits.api_key is None:
            return True
        scheme, _, token = request.headers.get('authorization', '').partition(' ')
        return scheme.lower() == 'bearer' and hmac.compare_digest(token.strip().encode(), self.limits.api_key.encode())

    async def _answer(self, request: Request, work: Callable[[Any, Params, Ticket], Awaitable[Any]]) -> Response:
        """Admit the request, read and check its image, and answer `work`'s result; 4xx for what was wrong."""
        if not self._authorised(request):
            return _unauthorised()
        batcher = self.batcher
        try:
            ticket = batcher.admit()
        except QueueFull as e:
            seconds = max(1, math.ceil(batcher.waiting * self.limits.batch_timeout + 1))
            return _error(503, f'the service is busy: {e}; retry later', {'Retry-After': str(seconds)})
        try:
            params = _params(request)
            data = await read_upload(request, self.limits.max_upload)
            image, _ = await run_in_threadpool(decode_image, data)
            return await _unless_disconnected(request, work(image, params, ticket))
        except UploadError as e:
            return _error(e.status, e.message)
        except InputError as e:
            return _error(400, str(e))
        finally:
            batcher.release(ticket)

    async def _submit(self, image: Any, params: Params, ticket: Ticket) -> Any:
        return await self.batcher.submit((image, params), ticket)

    async def _cam(self, image: Any, params: Params, ticket: Ticket) -> Any:
        [top] = await self._submit(image, Params(top_k=1), ticket)
        drawn = await self.batcher.call(self.handler.activation_map, image)  # with gradients: alone, not batched
        return dict(top, **drawn)

    async def predict(self, request: Request) -> Response:
        """The task's answer for one image, in the Hugging Face Inference API's JSON."""
        return await self._answer(request, self._submit)

    async def cam(self, request: Request) -> Response:
        """The top class of one image and its Grad-CAM overlay (classification)."""
        if not self.handler.info['cam']:
            return _error(404, self.handler.info['cam_unavailable'])
        return await self._answer(request, self._cam)

    async def info(self, request: Request) -> Response:
        """What is served: task, model, labels, precision, limits."""
        if not self._authorised(request):
            return _unauthorised()
        shown = {k: v for k, v in self.handler.info.items() if k != 'cam_unavailable'}
        return JSONResponse(dict(shown, max_batch_size=self.limits.max_batch_size,
                                 max_upload_bytes=self.limits.max_upload))

    async def health(self) -> Response:
        """The process is alive."""
        return JSONResponse({'status': 'alive'})

    async def ready_state(self) -> Response:
        """The model is loaded and warmed up (503 until then)."""
        if not self.ready:
            return _error(503, 'warming up: the model is not ready yet', {'Retry-After': '1'})
        return JSONResponse({'status': 'ready', 'model': self.handler.info['model'], 'task': self.handler.info['task']})

    async def prometheus(self) -> Response:
        """Prometheus metrics."""
        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)


class _Counted:
    """The ASGI middleware of `Service.count`."""

    def __init__(self, app: ASGIApp, count: Callable[[Scope, Receive, Send, ASGIApp], Awaitable[None]]):
        self.app = app
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.count(scope, receive, send, self.app)


def _unauthorised() -> JSONResponse:
    return _error(401, 'missing or wrong API key: send the header Authorization: Bearer KEY',
                  {'WWW-Authenticate': 'Bearer'})


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Response:
    """`work`'s result as JSON, or, if the client goes away first, `work` cancelled: its request leaves the
    queue, and the batch goes on without it."""
    job = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_until_disconnected(request))
    done, _ = await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    if job not in done:
        job.cancel()
        return _error(499, 'the client closed the connection')
    gone.cancel()
    return JSONResponse(job.result())


async def _page() -> Response:
    return FileResponse(str(_STATIC / 'index.html'), headers=_PAGE_HEADERS)


async def _http_error(request: Request, e: HTTPException) -> Response:
    message = f'no such endpoint: {request.method} {request.url.path}' if e.status_code == 404 else str(e.detail)
    return _error(e.status_code, message, getattr(e, 'headers', None))


async def _invalid(request: Request, e: RequestValidationError) -> Response:
    return _error(422, '; '.join(str(err.get('msg')) for err in e.errors()) or 'invalid request')


def create_app(handler: Handler, limits: Limits = Limits(),
               model_thread: Optional[ThreadPoolExecutor] = None) -> FastAPI:
    """The service of `handler` within `limits`, its batches run on `model_thread` (the thread that loaded it;
    `batching.model_thread`), or on a thread of its own."""
    service = Service(handler, limits, model_thread)
    app = FastAPI(title='cmtnet serve', summary='CMT models over HTTP: classification, detection, segmentation',
                  version='1', lifespan=service.lifespan)
    app.mount('/static', StaticFiles(directory=str(_STATIC)), name='static')
    app.add_middleware(_Counted, count=service.count)
    app.add_api_route('/predict', service.predict, methods=['POST'])
    app.add_api_route('/cam', service.cam, methods=['POST'])
    app.add_api_route('/info', service.info, methods=['GET'])
    app.add_api_route('/health', service.health, methods=['GET'])
    app.add_api_route('/ready', service.ready_state, methods=['GET'])
    app.add_api_route('/metrics', service.prometheus, methods=['GET'])
    app.add_api_route('/', _page, methods=['GET'], include_in_schema=False)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    return app


_ROUTES = {'/predict', '/cam', '/info', '/health', '/ready', '/metrics', '/'}
# the page runs only its own script and styles; images are the user's file (blob:) and the overlays (data:)
_PAGE_HEADERS = {
    'Content-Security-Policy': "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    'X-Content-Type-Options': 'nosniff',
}
