"""Exceptions of the host tools and the `ndn-edge` CLI, under one root, `ToolsError`.

`CommandError("verb: why")` is what a command handler raises for anything the user can fix; `ndn_edge.tools.cli.main`
catches it once and prints it as one line. `UsageError` is the same for a mistake in what was typed that argparse
could not see (exit status 2, like argparse's own). Errors from the gateway package (`ndn_edge.errors.GatewayError`)
are not wrapped: main catches them too and prefixes the verb, so their classes stay catchable for library callers.
Anything else reaching main is a bug: main prints its traceback and exits with `EXIT_BUG`.
"""
from __future__ import annotations

EXIT_FAILURE = 1  # a failure the message explains (a file, a port, a board)
EXIT_USAGE = 2  # anything wrong before a request is sent: options, names, patterns, --args, home, credentials
EXIT_NO_MATCH = 4  # NOT_FOUND's: `call --all` that matched no device a script could get an answer from
EXIT_BUG = 70  # EX_SOFTWARE in sysexits.h: an internal error, reported with its traceback
EXIT_INTERRUPTED = 130  # Ctrl-C, or SIGTERM

EXIT_CODES_HELP = f"""exit codes:
  one rule: what is wrong before a request is sent exits {EXIT_USAGE}; an answer of the gateway or
  of a device exits with its wire code's number
  0    success
  {EXIT_FAILURE}    other failure, explained in one line (e.g. a file or serial port could not be opened)
  {EXIT_USAGE}    usage or configuration, found before anything is sent: bad options, names, patterns or
       --args JSON, no home/credentials/gateway record, a home already in use
  3    INVALID_ARGUMENT    the arguments are not what the service takes
  4    NOT_FOUND           no such client, device or service; also `call --all` that matched nothing
  5    PERMISSION_DENIED   this client's rules do not allow it (see: ndn-edge acl list)
  6    UNAVAILABLE         the device or the gateway cannot be reached now
  7    DEADLINE_EXCEEDED   no answer in time (an unknown client or bad key also ends here: the
                           gateway does not answer requests it cannot authenticate)
  8    RESOURCE_EXHAUSTED  the device or gateway is out of memory or too busy
  9    INTERNAL            the service raised, or the framework failed; the message says how
  {EXIT_BUG}   a bug in ndn-edge: a traceback, then a line asking for a report
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C or SIGTERM)
"""


class ToolsError(Exception):
    """Root of every error raised by the host tools."""

    exit_code: int = 1


class CommandError(ToolsError):
    """A command failed for a reason the user can act on; the message reads "verb: why"."""

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CommandError):
    """What was typed is wrong in a way argparse could not check (e.g. a name under a site known only later)."""

    exit_code = EXIT_USAGE
