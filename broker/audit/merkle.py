"""RFC 9162 Merkle tree math for the audit log: hashes, roots, proofs and their checks.

Pure: no I/O, no logging, no clock; standard library only. The store keeps the
hash of every *aligned perfect subtree*, node ``(level, index)`` being the
Merkle Tree Hash of leaves ``[index * 2**level, (index + 1) * 2**level)``, level 0
the leaf hashes. Every range the RFC's recursive definitions visit is either
such a subtree or is split at the largest power of two smaller than its
length, so roots and proofs of any earlier tree size come from O(log n) stored
nodes. The generators read nodes through a ``get(level, index)`` callable
(raising KeyError for a missing node); ``needed_nodes_for_*`` name exactly the
keys a generator will read, so the store can fetch them in one query.

:func:`verify_inclusion` and :func:`verify_consistency` are the public, stable
checks an outside auditor runs (docs/AUDIT.md); they take raw 32-byte hashes
and need no stored nodes. Every failure of either is one
:class:`AuditProofError` (a ValueError) whose ``reason`` is one of:

::

    reason                meaning
    bad_size              an index or size that is not an int (bools refused),
                          negative, or not below 2**64 (RFC 9162 sizes are uint64)
    bad_hash_length       a leaf hash, proof hash or root not exactly 32 bytes
    index_out_of_range    index >= size
    size_order            size1 > size2
    wrong_proof_length    too few or too many proof hashes for the sizes
    root_mismatch         the proof does not lead to the given root(s)

Caller mistakes in the generators (negative numbers, index >= size, size1 > size2)
are plain ValueError: the broker asked for something that does not exist.

An inclusion proof binds the leaf to the *root*, not to the claimed size: two
sizes whose trees put the leaf on the same left/right path (e.g. leaf 0 in
trees of 3 and 4) accept the same proof, so a verifier must take the size
from the same signed checkpoint as the root. The same holds for consistency
proofs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_LEN",
    "AuditProofError",
    "Node",
    "NodeGetter",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "needed_nodes_for_append",
    "needed_nodes_for_consistency",
    "needed_nodes_for_inclusion",
    "needed_nodes_for_root",
    "node_hash",
    "nodes_to_store",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_LEN = 32
#: MTH({}) of RFC 9162 §2.1.1: the root of the empty tree.
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: RFC 9162 tree sizes and indices are uint64.
_MAX_SIZE = 1 << 64

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

#: Reads the stored node ``(level, index)``; raises KeyError when it is missing.
NodeGetter = Callable[[int, int], bytes]
Node = tuple[int, int]


class AuditProofError(ValueError):
    """An inclusion or consistency proof failed to verify; ``reason`` says why, for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"audit proof does not verify ({reason})")
        #: A short stable code (see the module docstring), safe to log.
        self.reason = reason


# --- hashing (RFC 9162 §2.1.1) -------------------------------------------------


def leaf_hash(entry: bytes) -> bytes:
    """The hash of one leaf, SHA-256(0x00 ‖ entry) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node, SHA-256(0x01 ‖ left ‖ right) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): the RFC's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --- storing (append) ------------------------------------------------------------


def nodes_to_store(index: int, leaf: bytes, get: NodeGetter) -> list[tuple[int, int, bytes]]:
    """The nodes to store when leaf hash ``leaf`` is appended at position ``index``.

    ``(0, index, leaf)`` and every aligned perfect subtree the leaf completes,
    lowest first, as ``(level, index, hash)``. Each completed subtree's left
    half is read through ``get`` (the keys are :func:`needed_nodes_for_append`).
    """
    _require_index(index, "index")
    if len(leaf) != HASH_LEN:
        raise ValueError(f"a leaf hash is {HASH_LEN} bytes, got {len(leaf)}")
    nodes = [(0, index, bytes(leaf))]
    level, position, current = 0, index, bytes(leaf)
    # An odd position is a right child: its left sibling is already stored and
    # together they complete the parent. The first even position ends the run.
    while position & 1:
        current = node_hash(get(level, position - 1), current)
        level, position = level + 1, position >> 1
        nodes.append((level, position, current))
    return nodes


def needed_nodes_for_append(index: int) -> set[Node]:
    """The keys :func:`nodes_to_store` reads when leaf ``index`` is appended."""
    _require_index(index, "index")
    needed: set[Node] = set()
    level, position = 0, index
    while position & 1:
        needed.add((level, position - 1))
        level, position = level + 1, position >> 1
    return needed


# --- generating (RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1) ----------------------------


def _mth(start: int, end: int, get: NodeGetter) -> bytes:
    """MTH(D[start:end]) for a non-empty range the RFC recursion visits."""
    n = end - start
    if _is_power_of_two(n):
        level = n.bit_length() - 1
        # The RFC recursion only reaches perfect ranges at aligned starts.
        assert start % n == 0, (start, end)  # noqa: S101 - an internal invariant, not input
        return get(level, start >> level)
    k = _split(n)
    return node_hash(_mth(start, start + k, get), _mth(start + k, end, get))


def root(size: int, get: NodeGetter) -> bytes:
    """MTH(D[0:size]), the tree head of the first ``size`` leaves (RFC 9162 §2.1.1)."""
    _require_index(size, "size")
    return EMPTY_ROOT if size == 0 else _mth(0, size, get)


def _path(index: int, start: int, end: int, get: NodeGetter) -> list[bytes]:
    if end - start == 1:
        return []
    k = _split(end - start)
    if index < start + k:
        return [*_path(index, start, start + k, get), _mth(start + k, end, get)]
    return [*_path(index, start + k, end, get), _mth(start, start + k, get)]


def inclusion_proof(index: int, size: int, get: NodeGetter) -> list[bytes]:
    """PATH(index, D[0:size]), the inclusion proof of leaf ``index`` (RFC 9162 §2.1.3.1).

    Raises ValueError unless 0 <= index < size.
    """
    _require_index(index, "index")
    _require_index(size, "size")
    if index >= size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    return _path(index, 0, size, get)


def _subproof(m: int, start: int, end: int, get: NodeGetter, *, complete: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if complete else [_mth(start, end, get)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, start, start + k, get, complete=complete), _mth(start + k, end, get)]
    return [*_subproof(m - k, start + k, end, get, complete=False), _mth(start, start + k, get)]


def consistency_proof(size1: int, size2: int, get: NodeGetter) -> list[bytes]:
    """PROOF(size1, D[0:size2]) (RFC 9162 §2.1.4.1) that the tree of size1 prefixes size2's.

    The RFC defines it for 0 < size1 < size2; for size1 == 0 or size1 == size2
    it is the empty list, the only proof :func:`verify_consistency` accepts
    there. Raises ValueError unless 0 <= size1 <= size2.
    """
    _require_index(size1, "size1")
    _require_index(size2, "size2")
    if size1 > size2:
        raise ValueError(f"size1 ({size1}) is larger than size2 ({size2})")
    if size1 in (0, size2):
        return []
    return _subproof(size1, 0, size2, get, complete=True)


def _recorded(run: Callable[[NodeGetter], object]) -> set[Node]:
    """The keys ``run`` reads; its control flow never depends on hash values."""
    keys: set[Node] = set()
    placeholder = bytes(HASH_LEN)

    def get(level: int, index: int) -> bytes:
        keys.add((level, index))
        return placeholder

    run(get)
    return keys


def needed_nodes_for_root(size: int) -> set[Node]:
    """Exactly the keys :func:`root` reads for ``size``."""
    return _recorded(lambda get: root(size, get))


def needed_nodes_for_inclusion(index: int, size: int) -> set[Node]:
    """Exactly the keys :func:`inclusion_proof` reads for ``index`` and ``size``."""
    return _recorded(lambda get: inclusion_proof(index, size, get))


def needed_nodes_for_consistency(size1: int, size2: int) -> set[Node]:
    """Exactly the keys :func:`consistency_proof` reads for ``size1`` and ``size2``."""
    return _recorded(lambda get: consistency_proof(size1, size2, get))


def _require_index(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")


# --- verifying (RFC 9162 §2.1.3.2, §2.1.4.2) -------------------------------------


def _check_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_SIZE:
        raise AuditProofError("bad_size")
    return value


def _check_hash(value: object) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_LEN:
        raise AuditProofError("bad_hash_length")
    return bytes(value)


def _check_proof(proof: object) -> list[bytes]:
    # A bare bytes object is a Sequence too; its "elements" are ints, refused below.
    if isinstance(proof, str) or not isinstance(proof, Sequence):
        raise AuditProofError("bad_hash_length")
    return [_check_hash(p) for p in proof]


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with head ``root``.

    The algorithm of RFC 9162 §2.1.3.2. Returns None on success; raises
    :class:`AuditProofError` on any failure, malformed input included.
    """
    index, size = _check_size(index), _check_size(size)
    leaf, head, path = _check_hash(leaf_hash), _check_hash(root), _check_proof(proof)
    if index >= size:
        raise AuditProofError("index_out_of_range")
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise AuditProofError("wrong_proof_length")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise AuditProofError("wrong_proof_length")
    if r != head:
        raise AuditProofError("root_mismatch")


def _verify_trivial_consistency(
    size1: int, size2: int, path: list[bytes], old: bytes, new: bytes
) -> None:
    """The edges RFC 9162 leaves undefined: size1 == size2, or size1 == 0."""
    if path:
        raise AuditProofError("wrong_proof_length")
    if size1 == size2 and old != new:
        raise AuditProofError("root_mismatch")
    if size1 == 0 and old != EMPTY_ROOT:
        raise AuditProofError("root_mismatch")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree of ``size1`` with head ``root1`` is a prefix of ``size2``'s.

    The algorithm of RFC 9162 §2.1.4.2 for 0 < size1 < size2. The RFC leaves the
    edges undefined; here:

    * size1 == size2: the proof must be empty and root1 == root2 (and both the
      empty-tree hash when the size is 0);
    * size1 == 0 < size2: every tree extends the empty one, so the proof must be
      empty and root1 must be MTH({}) = SHA-256("") (§2.1.1); root2 is not
      constrained beyond being 32 bytes.

    Returns None on success; raises :class:`AuditProofError` on any failure.
    """
    size1, size2 = _check_size(size1), _check_size(size2)
    old, new, path = _check_hash(root1), _check_hash(root2), _check_proof(proof)
    if size1 > size2:
        raise AuditProofError("size_order")
    if size1 in (0, size2):
        _verify_trivial_consistency(size1, size2, path, old, new)
        return
    # §2.1.4.2 step 1: an empty proof cannot prove anything for 0 < size1 < size2.
    if not path:
        raise AuditProofError("wrong_proof_length")
    if _is_power_of_two(size1):
        path = [old, *path]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditProofError("wrong_proof_length")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise AuditProofError("wrong_proof_length")
    if fr != old or sr != new:
        raise AuditProofError("root_mismatch")
