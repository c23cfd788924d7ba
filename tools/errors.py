"""Exceptions of the host tools and the `ndn-edge` CLI, under one root, `ToolsError`.

`CommandError("verb: why")` is what a command handler raises for anything the user can fix; `ndn_edge.tools.cli.main`
catches it once and prints it as one line. Errors from the gateway package (`ndn_edge.errors.GatewayError`) are not
wrapped: main catches them too and prefixes the verb, so their classes stay catchable for library callers.
"""
from __future__ import annotations


class ToolsError(Exception):
    """Root of every error raised by the host tools."""

    exit_code: int = 1


class CommandError(ToolsError):
    """A command failed for a reason the user can act on; the message reads "verb: why"."""

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
