"""XLA's persistent compilation cache, so a restarted run does not compile its steps again.

A preempted or supervised run (`launch/supervise.sh`, a TPU VM restart) resumes from its
checkpoint in a new process, which would otherwise trace and compile every jitted function
again: about 40 s for an MAE ViT-B/16 step and 80 s for DINO's multi-crop step on an H200
(docs/performance.md), more on a TPU pod. With `config.compilation_cache_dir` set, JAX stores
each compiled executable (those that took at least `jax_persistent_cache_min_compile_time_secs`,
1 s by default) under a key of the program, its shardings, the backend and the XLA flags, and a
later process with the same program loads it instead of compiling.

A relative directory lives inside the run's workdir (a resume of that run finds it); an absolute
path or a `gs://` URL can be shared by several runs of the same code. The cache is trusted input
(it holds executables): share it only with people who may run code on your machines.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from ssl_jax import errors
from ssl_jax import workdir as workdir_lib


def resolve(cache_dir: str, workdir: str) -> str | None:
  """The cache's location: None when off (""), `workdir/cache_dir` for a relative path."""
  if not cache_dir:
    return None
  if "://" in cache_dir or os.path.isabs(cache_dir):
    return cache_dir
  return os.path.join(workdir, cache_dir)


def enable(cache_dir: str, workdir: str) -> str | None:
  """Points JAX's persistent compilation cache at `resolve(cache_dir, workdir)`; returns it.

  Call before the run's first compilation. JAX opens the cache at the first compilation after
  the directory is set and keeps it for the process, so a second run in the same process with
  another directory still uses the first (one warning; the CLI runs one run per process).

  Raises:
    errors.WorkdirError: the directory cannot be created or written. JAX would skip every
      cache write with a log line and the run would go on uncached, so the restart that the
      cache is for would compile again; this says so before any work.
  """
  path = resolve(cache_dir, workdir)
  if path is None:
    return None
  _check_writable(path)
  current = jax.config.jax_compilation_cache_dir
  if current and current != path:
    logging.warning("compilation_cache_dir: this process already caches in %s; %s is not used "
                    "(JAX opens one cache per process).", current, path)
    return current
  jax.config.update("jax_compilation_cache_dir", path)
  logging.info("Persistent compilation cache: %s", path)
  return path


def _check_writable(path: str) -> None:
  problem = workdir_lib.directory_write_problem(path)
  if problem:
    raise errors.WorkdirError(
        f"compilation_cache_dir {path} cannot be created or written ({problem}); pass a "
        "writable folder, or --config.compilation_cache_dir= to run without the cache.")
