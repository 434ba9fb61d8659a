"""Dynamic batching: concurrent requests join one forward.

A request takes a place in the queue when it arrives (`admit`; past `max_queue` waiting requests it is
refused, and the service answers 503), hands its prepared image over (`submit`), and waits. One loop
forms the batches: from the first waiting request it gathers up to `max_batch_size` of them, waiting at
most `timeout` seconds for those already admitted (whose uploads are still being read; a request alone
does not wait), and runs the batch on the model's one thread (`model_thread`), so that the next batch
gathers while this one runs. A request whose client went away is dropped from the batch it has not yet
joined and never holds one up; an error in a forward fails that batch's requests, not the loop.
"""
import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple

__all__ = ['Batcher', 'QueueFull', 'Ticket', 'model_thread']


def model_thread() -> ThreadPoolExecutor:
    """The one thread for all of the model's torch work: loading it, warming it up, its batches, its activation
    maps. OpenMP gives every thread that starts parallel work a team of its own; with a second team (a model
    loaded on one thread and run on another) there are more OpenMP threads than cores, and OpenMP's threads
    then stop waiting busily between parallel regions and sleep instead, so that each of a forward's many
    regions waits for a sleeping thread to wake: the forward runs slower than the same forward timed in a
    process of one team (benchmarks/serve_load.py, docs/speed.md)."""
    return ThreadPoolExecutor(1, thread_name_prefix='cmtnet-model')


class QueueFull(Exception):
    """More requests wait than the queue holds."""


class Ticket:
    """An admitted request's place: given back once, unless the queue took it over."""
    queued = False
    released = False


class Batcher:
    """See the module docstring. `run(items)` returns one result per item; `observe(size, seconds)` is told of
    every batch run; `executor` is the model's thread (`model_thread`, the one it was loaded on), shut down
    with the batcher."""

    def __init__(self, run: Callable[[Sequence[Any]], List[Any]], max_batch_size: int, timeout: float,
                 max_queue: int, observe: Optional[Callable[[int, float], None]] = None,
                 executor: Optional[ThreadPoolExecutor] = None):
        self.run = run
        self.max_batch_size = max_batch_size
        self.timeout = timeout
        self.max_queue = max_queue
        self.observe = observe
        self.waiting = 0  # admitted and not yet in a running batch (decoding, or in the queue)
        self._queue: Deque[Tuple[Any, asyncio.Future]] = collections.deque()
        self._arrived = asyncio.Event()
        self.executor = executor or model_thread()
        self._loop_task: Optional[asyncio.Task] = None

    def admit(self) -> 'Ticket':
        """A place in the queue, or QueueFull; the place passes to the batch with `submit(item, ticket)`, and
        `release(ticket)` gives back a place that never got there (a refused upload, a client gone)."""
        if self.waiting >= self.max_queue:
            raise QueueFull(f'{self.waiting} requests are waiting, the queue holds {self.max_queue} (--max-queue)')
        self.waiting += 1
        return Ticket()

    def release(self, ticket: 'Ticket') -> None:
        if not ticket.queued and not ticket.released:
            ticket.released = True
            self.waiting -= 1

    async def submit(self, item: Any, ticket: 'Ticket') -> Any:
        """The result of `item`, from the batch it joins."""
        future = asyncio.get_running_loop().create_future()
        ticket.queued = True
        self._queue.append((item, future))
        self._arrived.set()
        try:
            return await future
        finally:
            if not future.done():  # the request was cancelled: its client went away
                future.cancel()

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the model's thread, between batches (warming up, activation maps)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._form_batches())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def _gather(self) -> List[Tuple[Any, asyncio.Future]]:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.monotonic() + self.timeout
        # wait only for requests already on their way (admitted, their images still being read): a request
        # alone goes at once, and a batch fills from those that arrived together
        while (len(self._queue) < min(self.max_batch_size, self.waiting)
               and (left := deadline - time.monotonic()) > 0):
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        batch = []
        while self._queue and len(batch) < self.max_batch_size:
            item, future = self._queue.popleft()
            self.waiting -= 1
            if not future.done():
                batch.append((item, future))
        return batch

    async def _form_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as e:  # the batch's requests fail; the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            if self.observe is not None:
                self.observe(len(batch), time.perf_counter() - start)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
