"""Key pairs and their raw encodings: Ed25519 signing and HPKE ML-KEM-768+X25519.

Pure functions over ``cryptography`` key objects; nothing here touches files.
Encodings (see docs/PROTOCOL.md, "Keys"):

* Ed25519 public key: the 32 raw bytes (RFC 8032).
* HPKE public key: ML-KEM-768 encapsulation key (1184 bytes, FIPS 203) followed
  by the X25519 public key (32 bytes) — 1216 bytes, the X-Wing order.
* HPKE private key: the 32-byte X-Wing seed; SHAKE256(seed, 96 bytes) gives
  the ML-KEM-768 seed (d ‖ z, 64 bytes) and the X25519 private key (32 bytes),
  as in draft-connolly-cfrg-xwing-kem (IANA HPKE KEM id 0x647A), so an agency
  may generate its key with any X-Wing implementation. Only stored encrypted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)

MLKEM768_PUBLIC_LEN = 1184
MLKEM768_SEED_LEN = 64
X25519_LEN = 32
HPKE_PUBLIC_LEN = MLKEM768_PUBLIC_LEN + X25519_LEN
HPKE_PRIVATE_LEN = 32  # the X-Wing seed
ED25519_LEN = 32

#: The HPKE suite of envelope suite v1: base mode, hybrid PQ KEM, HKDF-SHA256, AES-256-GCM.
HPKE_SUITE = Suite(KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


@dataclass(frozen=True, slots=True)
class HpkeKeyPair:
    """An HPKE ML-KEM-768+X25519 key pair with its raw encodings."""

    private_key: MLKEM768X25519PrivateKey
    public_key: MLKEM768X25519PublicKey
    private_bytes: bytes
    public_bytes: bytes


def hpke_keypair_from_private_bytes(data: bytes) -> HpkeKeyPair:
    """Rebuild an HPKE key pair from its 32-byte X-Wing seed."""
    if len(data) != HPKE_PRIVATE_LEN:
        raise ValueError(f"HPKE private key must be {HPKE_PRIVATE_LEN} bytes, got {len(data)}")
    expanded = hashlib.shake_256(data).digest(MLKEM768_SEED_LEN + X25519_LEN)
    kem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:MLKEM768_SEED_LEN])
    dh_key = x25519.X25519PrivateKey.from_private_bytes(expanded[MLKEM768_SEED_LEN:])
    private_key = MLKEM768X25519PrivateKey(kem_key, dh_key)
    public_bytes = kem_key.public_key().public_bytes_raw() + dh_key.public_key().public_bytes_raw()
    return HpkeKeyPair(
        private_key=private_key,
        public_key=private_key.public_key(),
        private_bytes=data,
        public_bytes=public_bytes,
    )


def generate_hpke_keypair(seed: bytes) -> HpkeKeyPair:
    """Make an HPKE key pair from 32 bytes of fresh randomness (injected, for vectors)."""
    return hpke_keypair_from_private_bytes(seed)


def hpke_public_key_from_bytes(data: bytes) -> MLKEM768X25519PublicKey:
    """Parse a 1216-byte HPKE public key; raises ValueError on any malformed input."""
    if len(data) != HPKE_PUBLIC_LEN:
        raise ValueError(f"HPKE public key must be {HPKE_PUBLIC_LEN} bytes, got {len(data)}")
    kem_pub = mlkem.MLKEM768PublicKey.from_public_bytes(data[:MLKEM768_PUBLIC_LEN])
    dh_pub = x25519.X25519PublicKey.from_public_bytes(data[MLKEM768_PUBLIC_LEN:])
    return MLKEM768X25519PublicKey(kem_pub, dh_pub)


def ed25519_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from its 32-byte seed."""
    return Ed25519PrivateKey.from_private_bytes(seed)


def ed25519_private_bytes(key: Ed25519PrivateKey) -> bytes:
    """The 32-byte seed of an Ed25519 private key."""
    return key.private_bytes_raw()


def ed25519_public_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes_raw()


def ed25519_public_from_bytes(data: bytes) -> Ed25519PublicKey:
    """Parse a 32-byte Ed25519 public key; raises ValueError on malformed input."""
    if len(data) != ED25519_LEN:
        raise ValueError(f"Ed25519 public key must be {ED25519_LEN} bytes, got {len(data)}")
    return Ed25519PublicKey.from_public_bytes(data)
