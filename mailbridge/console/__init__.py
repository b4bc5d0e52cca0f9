"""The operator console: server-rendered pages under /console/ on the HTTP listener (docs/console.md).

Imported by ``api/app.py`` only (and by the CLI for ``mailbridge operator``); it imports the domain
and calls the same functions the JSON API calls.
"""

from __future__ import annotations

from .app import create_console

__all__ = ["create_console"]
