"""Encryption at rest: the master key, per-practice data keys, sealed secrets."""
