"""The MiradorError family: every failure a user can see, with a hint and an exit code.

Exit codes (DESIGN.md): 0 success, 1 user error (bad input, bad file),
2 usage, 3 runtime unreachable or failing, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_INTERRUPTED = 130


class MiradorError(Exception):
    """An error meant for the user: a one-line message, an optional hint, an exit code."""

    exit_code = EXIT_USER

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(MiradorError):
    """The command line itself is wrong (missing prompt, bad flag value)."""

    exit_code = EXIT_USAGE


class ConfigError(MiradorError):
    """A file the user edits is broken; the message names file, line and key."""

    exit_code = EXIT_USER


class RuntimeUnavailable(MiradorError):
    """The model server cannot be reached."""

    exit_code = EXIT_RUNTIME


class RuntimeFailure(MiradorError):
    """The model server answered, but with an error."""

    exit_code = EXIT_RUNTIME


class ModelNotFound(MiradorError):
    """The server does not have the model the user asked for."""

    exit_code = EXIT_USER

    def __init__(self, model: str, host: str, message: str | None = None):
        super().__init__(
            message or f"model '{model}' is not installed on {host}",
            hint=f"install it with: ollama pull {model}   (or list what is there: mirador models)",
        )
        self.model = model
