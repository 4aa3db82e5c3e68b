"""Fixtures shared by the test modules (helpers they import live in tests/*_helpers.py)."""

import pytest


@pytest.fixture
def rng():
    """A fresh numpy Generator per test that remembers its seed (LOOKUP_TEST_SEED replays one)."""
    from lookup_helpers import seeded_rng

    return seeded_rng()
