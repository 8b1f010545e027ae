"""The client's two failures, by whose fault: the command line's (exit 2) or the server's (exit 1)."""

from __future__ import annotations


class UsageError(Exception):
    """The command line asks for something impossible (missing file, bad URL, ...): exit code 2."""


class ServerError(Exception):
    """The server, the endpoint or the job failed: exit code 1."""
