"""Identities and keys: directory certification, pseudonyms and the envelope.

Depends on ``schemas`` only. The envelope's pure functions take keys, time and
randomness as arguments; nothing in this package reads the clock on its own
except the CLI and the file-backed key store.
"""
