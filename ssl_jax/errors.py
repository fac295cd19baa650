"""Errors a user can fix, and the one place the command lines turn them into clean messages.

Bad input (a config value, a dataset, a workdir, a checkpoint nothing can restore, a run that
diverged) raises a `UserError`: the command-line tools print its message in one or two lines,
prefixed with the tool's name, and exit with status 1. The Python traceback says nothing the
message does not, so it is shown only on request: `--debug` on any command line, or
`SSL_JAX_DEBUG=1` in the environment. Anything that is not a `UserError` is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SSL_JAX_DEBUG"


class UserError(Exception):
  """Bad input the user can fix; the message says what was wrong and how to fix it."""


class WorkdirError(UserError):
  """The workdir cannot be used: it is a file, lies under one, is locked or holds another run."""


def pop_debug_flag(argv: Sequence[str]) -> list[str]:
  """`argv` without `--debug`; the flag (or SSL_JAX_DEBUG=1) turns tracebacks back on."""
  argv = list(argv)
  if DEBUG_FLAG in argv:
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    os.environ[DEBUG_ENV] = "1"  # Inherited by grain workers and subprocesses too.
  return argv


def debug_enabled() -> bool:
  return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def clean_exit(prog: str) -> Iterator[None]:
  """Turns a `UserError` raised inside into `prog: message` on stderr and exit status 1, and a
  Ctrl-C into `prog: interrupted.` and status 130 (no traceback either way)."""
  try:
    yield
  except UserError as error:
    if debug_enabled():
      raise
    sys.exit(f"{prog}: {error}")
  except KeyboardInterrupt:
    if debug_enabled():
      raise
    print(f"{prog}: interrupted.", file=sys.stderr)
    sys.exit(130)  # The shell's status for a process stopped by SIGINT.
