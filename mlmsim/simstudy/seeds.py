"""Random-number streams of a study: one independent, reproducible stream per replicate.

This module owns the seeding scheme. A study has one root seed (a non-negative
integer, the entropy of a :class:`numpy.random.SeedSequence`). Replicate ``r`` of
condition ``c`` gets the 64-bit seed

    seed(c, r) = SeedSequence(entropy=root, spawn_key=(c, r)).generate_state(1, uint64)[0]

and its data are drawn from ``numpy.random.default_rng(seed(c, r))``. The seed is a
function of (root, c, r) alone, so it does not depend on how replicates are split into
chunks, on the number of workers or on the order in which chunks finish, and the seed
recorded in a result row regenerates that replicate alone:
``generate(condition, np.random.default_rng(row.seed))``. A method that asks for a
random-number generator gets ``default_rng(SeedSequence(seed, spawn_key=(k,)))`` for the
k-th method of the study, a stream independent of the data stream.

Deriving seeds and building generators one at a time through ``SeedSequence`` costs
about 12 microseconds per replicate, more than the runner's whole budget, so
:func:`replicate_seeds` and :func:`replicate_rngs` run the SeedSequence hash (Melissa
O'Neill's ``seed_seq_fe`` as numpy implements it) vectorised over the replicates of a
chunk. The results are bit-identical to numpy's own; the tests check this.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.random import PCG64, Generator, SeedSequence
from numpy.random.bit_generator import ISpawnableSeedSequence

__all__ = [
    "as_root_seed",
    "method_rng",
    "replicate_rng",
    "replicate_rngs",
    "replicate_seed",
    "replicate_seeds",
]

# Constants of numpy's SeedSequence (numpy/random/bit_generator.pyx).
_POOL_SIZE = 4
_INIT_A = 0x43B0D7E5
_MULT_A = 0x931E8875
_INIT_B = 0x8B51F9DD
_MULT_B = 0x58F38DED
_MIX_MULT_L = np.uint32(0xCA01F9DD)
_MIX_MULT_R = np.uint32(0x4973F715)
_XSHIFT = np.uint32(16)
_MASK32 = 0xFFFFFFFF


def as_root_seed(seed: int | None) -> int:
    """Return the study's root seed: ``seed`` itself, or 128 fresh random bits if None."""
    if seed is None:
        return secrets.randbits(32 * _POOL_SIZE)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be a non-negative integer or None, not {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return int(seed)


def _int_words(n: int) -> list[int]:
    """uint32 words of a non-negative integer, lowest first (numpy's coercion of ints)."""
    if n == 0:
        return [0]
    words = []
    while n > 0:
        words.append(n & _MASK32)
        n >>= 32
    return words


def _pool(entropy: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Vectorised ``SeedSequence.mix_entropy``: the 4-word pool for each of R inputs.

    ``entropy`` is the assembled entropy array word by word, each word a uint32 array of
    shape (R,) (one value per input). Returns 4 uint32 arrays of shape (R,).
    """
    hash_const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_const
        value = value ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_A) & _MASK32
        value = value * np.uint32(hash_const)
        return value ^ (value >> _XSHIFT)

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = _MIX_MULT_L * x - _MIX_MULT_R * y
        return result ^ (result >> _XSHIFT)

    zero = np.zeros_like(entropy[0])
    mixer = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL_SIZE)]
    for i_src in range(_POOL_SIZE):
        for i_dst in range(_POOL_SIZE):
            if i_src != i_dst:
                mixer[i_dst] = mix(mixer[i_dst], hashmix(mixer[i_src]))
    for i_src in range(_POOL_SIZE, len(entropy)):
        for i_dst in range(_POOL_SIZE):
            mixer[i_dst] = mix(mixer[i_dst], hashmix(entropy[i_src]))
    return mixer


def _generate_state(pool: list[np.ndarray], n_words64: int) -> np.ndarray:
    """Vectorised ``SeedSequence.generate_state(n_words64, np.uint64)``; shape (R, n_words64)."""
    hash_const = _INIT_B
    words = []
    for i_dst in range(2 * n_words64):
        value = pool[i_dst % _POOL_SIZE] ^ np.uint32(hash_const)
        hash_const = (hash_const * _MULT_B) & _MASK32
        value = value * np.uint32(hash_const)
        words.append(value ^ (value >> _XSHIFT))
    lo = np.stack(words[0::2], axis=1).astype(np.uint64)
    hi = np.stack(words[1::2], axis=1).astype(np.uint64)
    return lo | (hi << np.uint64(32))


def replicate_seeds(root: int, condition: int, reps: np.ndarray | Sequence[int]) -> np.ndarray:
    """64-bit seeds of replicates ``reps`` of condition ``condition``; uint64 array (R,).

    seed(c, r) = SeedSequence(entropy=root, spawn_key=(c, r)).generate_state(1, uint64)[0],
    computed for all r at once. ``condition`` and ``reps`` must be below 2**32.
    """
    reps = np.asarray(reps, dtype=np.int64)
    if reps.size and (reps.min() < 0 or reps.max() >= 2**32):
        raise ValueError("replicate indices must lie in [0, 2**32)")
    if not 0 <= condition < 2**32:
        raise ValueError("condition index must lie in [0, 2**32)")
    run = _int_words(root)
    run += [0] * (_POOL_SIZE - len(run))  # numpy pads run entropy when a spawn key is given
    shape = reps.shape
    words = [np.full(shape, w, dtype=np.uint32) for w in run]
    words.append(np.full(shape, condition, dtype=np.uint32))
    words.append(reps.astype(np.uint32))
    with np.errstate(over="ignore"):
        return _generate_state(_pool(words), 1)[:, 0]


def replicate_seed(root: int, condition: int, rep: int) -> int:
    """The 64-bit seed of one replicate, by numpy's SeedSequence (the reference definition)."""
    ss = SeedSequence(entropy=root, spawn_key=(condition, rep))
    return int(ss.generate_state(1, np.uint64)[0])


def replicate_rng(seed: int) -> Generator:
    """The data stream of a replicate with 64-bit seed ``seed``: ``default_rng(seed)``."""
    return np.random.default_rng(int(seed))


def method_rng(seed: int, k: int) -> Generator:
    """The stream of the k-th method on a replicate: ``default_rng(SeedSequence(seed, (k,)))``."""
    return np.random.default_rng(SeedSequence(int(seed), spawn_key=(k,)))


class _SeededSequence(ISpawnableSeedSequence):
    """``SeedSequence(seed)`` whose PCG64 state (4 uint64 words) was computed in bulk.

    Behaves as the real SeedSequence: other requests for state and ``spawn`` are served by
    a real ``SeedSequence(seed)`` built on first use.
    """

    __slots__ = ("seed", "_state", "_real")

    def __init__(self, seed: int, state: np.ndarray):
        self.seed = seed
        self._state = state
        self._real: SeedSequence | None = None

    def _seed_sequence(self) -> SeedSequence:
        if self._real is None:
            self._real = SeedSequence(self.seed)
        return self._real

    def generate_state(self, n_words, dtype=np.uint32):
        if n_words == 4 and np.dtype(dtype) == np.uint64:
            return self._state.copy()
        return self._seed_sequence().generate_state(n_words, dtype)

    def spawn(self, n_children):
        return self._seed_sequence().spawn(n_children)

    @property
    def entropy(self) -> int:
        return self.seed

    @property
    def spawn_key(self) -> tuple:
        return ()

    @property
    def pool_size(self) -> int:
        return _POOL_SIZE

    @property
    def n_children_spawned(self) -> int:
        return 0 if self._real is None else self._real.n_children_spawned

    def __reduce__(self):
        return (SeedSequence, (self.seed,))


def replicate_rngs(seeds: np.ndarray) -> Iterator[Generator]:
    """Generators ``default_rng(s)`` for each 64-bit seed s in ``seeds``, built in bulk.

    Equal, draw for draw, to ``numpy.random.default_rng(int(s))``: the PCG64 state
    SeedSequence(s).generate_state(4, uint64) is computed for all seeds at once.
    """
    seeds = np.asarray(seeds, dtype=np.uint64)
    if seeds.size == 0:
        return iter(())
    lo = (seeds & np.uint64(_MASK32)).astype(np.uint32)
    hi = (seeds >> np.uint64(32)).astype(np.uint32)
    # SeedSequence(s) hashes the words [lo] (s < 2**32) or [lo, hi]; padding the pool with
    # hashmix(0) makes [lo] and [lo, 0] identical, so [lo, hi] serves both cases.
    with np.errstate(over="ignore"):
        states = _generate_state(_pool([lo, hi]), 4)
    return (
        Generator(PCG64(_SeededSequence(int(s), st)))
        for s, st in zip(seeds.tolist(), states, strict=True)
    )
