"""Seeds of a study: the vectorised SeedSequence hash equals numpy's, draw for draw."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmsim.simstudy.seeds import (
    as_root_seed,
    method_rng,
    replicate_rng,
    replicate_rngs,
    replicate_seed,
    replicate_seeds,
)

roots = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
                  st.integers(0, 2**300))


@settings(max_examples=60, deadline=None)
@given(root=roots, condition=st.integers(0, 2**32 - 1),
       reps=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8))
def test_replicate_seeds_equal_seedsequence(root, condition, reps):
    got = replicate_seeds(root, condition, np.array(reps))
    expected = [
        int(np.random.SeedSequence(root, spawn_key=(condition, r)).generate_state(1, np.uint64)[0])
        for r in reps
    ]
    assert got.dtype == np.uint64
    assert got.tolist() == expected
    assert [replicate_seed(root, condition, r) for r in reps] == expected


@settings(max_examples=60, deadline=None)
@given(seeds=st.lists(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)),
                      min_size=1, max_size=6))
def test_replicate_rngs_equal_default_rng(seeds):
    for seed, rng in zip(seeds, replicate_rngs(np.array(seeds, dtype=np.uint64)), strict=True):
        ref = np.random.default_rng(seed)
        assert np.array_equal(rng.random(7), ref.random(7))
        assert np.array_equal(rng.normal(size=3), ref.normal(size=3))


def test_bulk_generators_behave_like_real_ones():
    seed = 2**40 + 12345
    rng = next(replicate_rngs(np.array([seed], dtype=np.uint64)))
    ref = replicate_rng(seed)
    # spawning and pickling go through a real SeedSequence(seed)
    assert rng.spawn(2)[1].random() == ref.spawn(2)[1].random()
    clone = pickle.loads(pickle.dumps(rng))
    assert clone.random() == rng.random()
    assert rng.bit_generator.seed_seq.generate_state(3).tolist() == \
        np.random.SeedSequence(seed).generate_state(3).tolist()


def test_streams_are_distinct():
    seeds = replicate_seeds(7, 0, np.arange(1000))
    assert len(set(seeds.tolist())) == 1000
    other = replicate_seeds(7, 1, np.arange(1000))
    assert not set(seeds.tolist()) & set(other.tolist())
    data = replicate_rng(int(seeds[0])).random()
    assert method_rng(int(seeds[0]), 0).random() != data
    assert method_rng(int(seeds[0]), 0).random() != method_rng(int(seeds[0]), 1).random()


def test_root_seed_validation():
    assert as_root_seed(5) == 5
    assert as_root_seed(np.int64(5)) == 5
    fresh = as_root_seed(None)
    assert 0 <= fresh < 2**128
    for bad in (-1, 1.5, "3", True):
        with pytest.raises((TypeError, ValueError)):
            as_root_seed(bad)
    with pytest.raises(ValueError):
        replicate_seeds(1, 0, np.array([2**32]))
