"""runtime.io.prefetch: reading ahead on a thread keeps the order, the errors' places, and stops cleanly."""

import threading

import pytest

from runtime.io.prefetch import prefetched


@pytest.mark.parametrize("depth", [0, 1, 3, 100])
def test_items_in_order(depth):
    assert list(prefetched(iter(range(50)), depth)) == list(range(50))
    assert list(prefetched([], depth)) == []


def test_an_error_is_raised_after_the_items_before_it():
    def items():
        yield from range(3)
        raise ValueError("frame 3 is damaged")

    got = []
    with pytest.raises(ValueError, match="frame 3 is damaged"):
        for item in prefetched(items(), 2):
            got.append(item)
    assert got == [0, 1, 2]


def test_leaving_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()
    produced = []

    def items():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()  # a video container would be closed here

    it = prefetched(items(), 4)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert closed.is_set()  # closed by the time close() returns: the thread has stopped
    assert len(produced) <= 3 + 4 + 1  # never more than depth ahead
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]


def test_reading_runs_beside_the_consumer():
    """The next item is produced while the consumer still holds the current one (no timing: a
    sequential reader would leave the event unset, and the wait would run out)."""
    produced = [threading.Event() for _ in range(3)]

    def source():
        for i in range(3):
            produced[i].set()
            yield i

    for i in prefetched(source(), 1):
        if i < 2:
            assert produced[i + 1].wait(timeout=10), f"item {i + 1} was not read while item {i} was in use"


def test_an_iterable_that_cannot_be_iterated_raises_here():
    class Broken:
        def __iter__(self):
            raise OSError("the camera is gone")

    with pytest.raises(OSError, match="the camera is gone"):
        list(prefetched(Broken(), 2))


def test_negative_depth_is_refused():
    with pytest.raises(ValueError, match="depth must be 0 or more"):
        list(prefetched([1], -1))
