"""Alembic migrations of the broker's store (``broker.store.migrate`` runs them).

Revisions are hand-written and must match ``broker.store.METADATA`` exactly;
tests/test_store.py compares the migrated schema with it. A revision changes
the schema only: it never copies, decrypts or derives message content, keys or
personnummer, none of which the store ever holds.
"""
