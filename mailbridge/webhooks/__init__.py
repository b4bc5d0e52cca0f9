"""Webhooks: every event the gateway records, POSTed to the practice's (or the platform's) endpoints.

``domain/events.py`` records what happened in the transaction that made it happen; this package is a
consumer of those rows: ``endpoints`` (configuration, secrets, the delivery log), ``addresses`` (the
URL may only reach public addresses), ``payloads`` (an event as JSON), ``delivery`` (one signed
request) and ``worker`` (fan-out, leases, retries, disabling). Only the composition root imports it.
"""
