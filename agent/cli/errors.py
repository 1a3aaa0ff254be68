"""Exit codes and the errors a command raises to end with one line on stderr.

``main`` catches ``CliError``, prints ``error: <message>`` and exits with the
error's code; nothing below ``main`` calls ``sys.exit``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # the server answered with an error, or could not be reached
EXIT_USAGE = 2  # bad flags, a bad file, a value that does not parse


class CliError(Exception):
    """A failure reported as ``error: <message>`` and ``exit_code``."""

    exit_code = EXIT_ERROR


class UsageError(CliError):
    """The user asked for something malformed; nothing was sent."""

    exit_code = EXIT_USAGE
