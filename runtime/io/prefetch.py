"""Read ahead on a background thread: decoding the next frames while the current ones are inferred.

PyAV and Pillow release the GIL while they decode, so the reading thread runs beside ONNX Runtime
or the GPU; the queue bounds how far ahead it gets (memory stays one batch or so).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_END = object()


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """The items of `items`, in order, produced on a background thread up to `depth` ahead.

    An exception raised while producing is raised here, after the items before it, as it would be
    without the thread. Closing this iterator (or leaving a loop over it) stops the thread and
    closes `items`. depth 0: no thread, `items` as they are.
    """
    if depth < 0:
        raise ValueError(f"depth must be 0 or more, got {depth}")
    if depth == 0:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = None
        try:
            it = iter(items)
            for item in it:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there in order
            put((None, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # a generator's own cleanup (an open container), on the thread that ran it

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = slots.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
