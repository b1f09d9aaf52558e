"""Seeds and fingerprints for datasets: stable hashes of what a dataset is, not where it is read from."""

from __future__ import annotations

import hashlib

import attrs

_MASK63 = (1 << 63) - 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (ints, strings), stable across runs and platforms.

    Hashing the parts, rather than ``seed * K + epoch``, keeps distinct tuples
    from colliding.
    """
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def fingerprint_of(*parts: object) -> str:
    """A 16-hex-digit digest of ``parts`` (by their ``repr``): equal parts, equal fingerprint."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


NOT_CONTENT = frozenset({"path", "val_path", "batch_size", "eval_batch_size", "num_threads", "prefetch", "cache"})
"""Config keys that change where data is read from or how fast, not what it is: left out of fingerprints."""


def options_fingerprint(config: object, *parts: object) -> str:
    """``fingerprint_of`` the attrs ``config``'s kind and content keys (not ``NOT_CONTENT``), and ``parts``."""
    options = {k: v for k, v in attrs.asdict(config).items() if k not in NOT_CONTENT}
    return fingerprint_of(type(config).__name__, sorted(options.items()), *parts)
