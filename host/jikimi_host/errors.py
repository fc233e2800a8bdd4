"""The host's one error base: every failure a person can act on is a JikimiError, carrying the
message to show and the exit code `jikimi` ends with (cli/__init__.py turns them into both, in one
place). Libraries raise them; none prints or exits.

Exit codes: 1 a failure (a board that does not answer, a build that breaks), 2 bad input (an
argument, a config file, an unknown board or transport), 3 a relay database that must not be
used until a person looks (a supervisor should not restart the relay in a loop:
systemd RestartPreventExitStatus=3).
"""

from __future__ import annotations

FAILURE_EXIT = 1
USAGE_EXIT = 2
STORE_EXIT = 3


class JikimiError(Exception):
    """A problem the user can act on: `message` for people, `exit_code` for the shell."""

    exit_code = FAILURE_EXIT

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(JikimiError):
    """Bad input from the user: an argument, a config file, a name that is not known."""

    exit_code = USAGE_EXIT


class WaitTimeout(JikimiError, TimeoutError):
    """Something awaited did not happen in time; the message names it and shows what was seen."""
