"""Large buffers kept for the next window (alphamill.memory.reusable_empty)."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from alphamill import memory


@pytest.fixture(autouse=True)
def empty_pool():
    memory.drop_pool()
    yield
    memory.drop_pool()


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_freed_buffer_is_handed_out_again_for_a_similar_size():
    a = memory.reusable_empty((100, 100_000), np.float32)  # 40 MB
    first = address(a)
    a[:] = 1.0
    del a
    gc.collect()
    assert memory.pooled_bytes() >= 40_000_000
    b = memory.reusable_empty((100, 99_000), np.float32)  # slightly smaller: same buffer
    assert address(b) == first and b.shape == (100, 99_000) and b.dtype == np.float32
    assert memory.pooled_bytes() == 0


def test_a_buffer_is_not_reused_while_a_view_of_it_lives():
    a = memory.reusable_empty((100, 100_000), np.float32)
    view = a.T[5:10]
    del a
    gc.collect()
    assert memory.pooled_bytes() == 0
    b = memory.reusable_empty((100, 100_000), np.float32)
    assert address(b) != address(view.base)
    del view
    gc.collect()
    assert memory.pooled_bytes() > 0


def test_small_arrays_and_a_full_pool_are_left_to_the_allocator(monkeypatch):
    small = memory.reusable_empty((10, 10), np.float64)
    assert small.base is None  # plain numpy memory
    monkeypatch.setattr(memory, "POOL_KEEP_BYTES", 60 << 20)
    a = memory.reusable_empty((100, 100_000), np.float32)
    b = memory.reusable_empty((100, 100_000), np.float32)
    del a, b
    gc.collect()
    assert memory.pooled_bytes() == 48 << 20  # one 40 MB buffer (in 16 MB steps) is kept
    memory.drop_pool()
    assert memory.pooled_bytes() == 0


def test_gc_frozen_leaves_older_objects_out_until_the_outermost_block_ends():
    gc.unfreeze()
    with memory.gc_frozen():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with memory.gc_frozen():  # nested: still frozen
            pass
        assert gc.get_freeze_count() == frozen
    assert gc.get_freeze_count() == 0


def test_gc_frozen_leaves_a_freeze_made_by_others_alone():
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with memory.gc_frozen():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_training_here_unmaps_the_kept_buffers_at_the_end():
    with memory.training_here():
        a = memory.reusable_empty((100, 100_000), np.float32)
        del a
        gc.collect()
        assert memory.pooled_bytes() > 0  # kept for the next window
    assert memory.pooled_bytes() == 0
