r"""The one training loop, for every method.

    python -m ssl_jax.train --config configs/mae.py:smoke --workdir /tmp/mae \
        [--config.optim.lr=1e-3 ...]

config -> data streams (this process's shard: `ssl_jax.data.streams`) -> grain batches -> one
global sharded pytree, built ahead in a thread (`ssl_jax.data.prefetch`) -> jitted train step
(`ssl_jax.trainer`) [views on device -> method.loss -> grads -> optax -> method.update_state]
-> metrics (`ssl_jax.metrics_io`: TensorBoard, metrics.jsonl, optional W&B; one stdout line per
log step with ETA and the collapse metrics: `ssl_jax.progress`, `ssl_jax.collapse`) /
evaluators / orbax checkpoints, and an optional profiler window (`profile_steps`,
`ssl_jax.profiler`).

A run resumes from the latest checkpoint in its workdir, data iterator included, so an
interrupted run sees exactly the batches an uninterrupted one would. SIGTERM (TPU preemption)
and a first Ctrl-C save and exit cleanly; a non-finite loss, gradient norm or state stops the
run before anything bad is saved. Bad input (config, data, workdir) is a one- or two-line error
without a traceback (`--debug` shows it; `ssl_jax.errors`); docs/reliability.md lists what is
guaranteed.
"""

from __future__ import annotations

import functools
import logging as std_logging
import os
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from clu import parameter_overview
from jax.experimental import multihost_utils

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import (catalog, collapse, compile_cache, config_lib, distributed, errors, flops,
                     metrics_io, profiler, progress, summary, trainer, viz, wandb_writer)
from ssl_jax import steps as steps_lib
from ssl_jax import workdir as workdir_lib
from ssl_jax.data import prefetch, streams
from ssl_jax.evaluators import runner



def _define_flags() -> None:
  """Defined only when run as a program, so importing this module defines no global flags.
  Idempotent: a process (a test session) may run the program more than once."""
  if "config" in flags.FLAGS:
    return
  if "workdir" not in flags.FLAGS:  # export's, where both programs ran in one process.
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and exports.")
  flags.DEFINE_string("config", None, "configs/<method>.py[:preset[,preset...]]")
  distributed.define_flags()


class NonFiniteLossError(ckpt_lib.NonFiniteError):
  """The loss, gradient norm or updated state became NaN or infinite."""


class _Preemption:
  """Remembers a SIGTERM (preemption) or a first Ctrl-C (SIGINT) so the loop saves a checkpoint
  at the end of the step and exits cleanly; a second Ctrl-C stops at once, without saving.

  SIGINT is taken over only where Python's own handler has it: a process started with SIGINT
  ignored (a shell's background job) keeps ignoring it.
  """

  def __init__(self):
    self.signal_name = ""  # Of the latest signal that asked for a stop; "" while none has.
    self._previous: dict[int, Any] = {}

  @property
  def requested(self) -> bool:
    return bool(self.signal_name)

  def install(self):
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
      signals.append(signal.SIGINT)
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)

  def uninstall(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested:
      self.uninstall()
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      logging.warning("Ctrl-C: saving a checkpoint at the end of this step, then exiting. "
                      "Press Ctrl-C again to stop at once, without saving.")
    else:
      logging.warning("%s received: saving a checkpoint at the end of this step.",
                      self.signal_name)

  def any_process_requested(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags_all = multihost_utils.process_allgather(np.array(self.requested))
    return bool(np.any(flags_all))


def _check_finite(step: int, loss: float, checkpointer, *, grad_norm: float = 0.0,
                  state_finite: bool = True) -> None:
  """Stops the run at the first non-finite loss, gradient norm or updated state.

  A huge but finite loss can come with NaN gradients and NaN params (lr=1e6 does it at step
  3), so the loss alone is not enough; the state is checked where it would be saved or logged.
  """
  problems = [f"{what} became {value}" for what, value in (("loss", loss),
                                                           ("gradient norm", grad_norm))
              if not np.isfinite(value)]
  if not state_finite:
    problems.append("the updated params or method state hold NaN/inf")
  if problems:
    last = checkpointer.latest_step()
    where = (f"the last checkpoint (step {last}, checked finite when saved) is intact in "
             f"{checkpointer.directory}" if last is not None
             else "no checkpoint had been saved yet")
    problem = " and ".join(problems)
    raise NonFiniteLossError(
        f"{problem[0].upper()}{problem[1:]} at step {step}; stopping before saving "
        f"anything from it, and {where}. Lower optim.lr, set optim.grad_clip_norm, lengthen "
        "the warmup, or use model.dtype=float32.")


def _restore_or_init(setup: trainer.TrainSetup, checkpointer: ckpt_lib.Checkpointer,
                     data_iter: prefetch.DevicePrefetcher) -> tuple[int, Any]:
  """(first step, train state): the newest checkpoint's, data position included, or step 0's.

  The restore reads straight into the state's shardings from its abstract shapes, and a fresh
  state is built only when there is nothing to resume: initialising first and restoring over
  it would hold two copies of the state on the device at start-up (a large model's memory
  twice over). `data_iter` has read nothing yet (`DevicePrefetcher` starts on its first
  batch), so the restored position is the one the first step reads from.
  """
  abstract, _ = setup.step_arg_shapes()
  start_step, restored = checkpointer.restore_latest(abstract, data_iter)
  if start_step is not None:
    logging.info("Resuming from checkpoint step %d in %s", start_step, checkpointer.directory)
    return start_step, restored
  train_state = setup.init_state()
  parameter_overview.log_parameter_overview(train_state["params"])
  return 0, train_state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns the final metrics.

  The workdir is checked, locked and its config compared with the run it holds before anything
  is written (`ssl_jax.workdir`).
  """
  config_lib.validate(config)
  with workdir_lib.open_run(config, workdir):
    return _train_and_evaluate(workdir_lib.config_to_build(config, workdir), workdir, devices)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        devices=None) -> dict[str, Any]:
  workdir_path = pathlib.Path(workdir)
  wandb_writer.check_available(config)
  compile_cache.enable(config.compilation_cache_dir, workdir)
  data = streams.make_train_data(config)
  steps_per_epoch = data.steps_per_epoch
  total_steps = steps_lib.total_steps(config, steps_per_epoch)
  setup = trainer.build(config, devices=devices, total_steps=total_steps,
                        steps_per_epoch=steps_per_epoch, num_classes=data.num_classes)
  mesh, method, schedule, train_step = setup.mesh, setup.method, setup.schedule, setup.step
  # Before the compile starts: an eval source or batch size it rejects fails at once, not after
  # the process has waited for a compile that cannot be cancelled.
  protocols = runner.parse_protocols(config.eval.protocols)
  evaluator = runner.FeatureEvaluator(method, config, mesh, protocols) if protocols else None
  compile_start = time.time()
  step_compiled = setup.compile_step_in_background()  # Overlaps the rest of start-up.
  data_iter = prefetch.DevicePrefetcher(data.iterator, mesh, config.data.prefetch)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  start_step, train_state = _restore_or_init(setup, checkpointer, data_iter)
  if jax.process_index() == 0:
    metrics_io.drop_records_after(workdir, start_step)  # Steps the resumed run writes again.
  # MFU meter, where the chip's bf16 peak is known (accelerators; CPU runs skip the count).
  # Counted on the step's own shapes: the background compile's trace serves it.
  peak_flops = flops.bf16_peak_flops(mesh.devices.flat[0].device_kind)
  model_flops = trainer.model_flops_per_step(
      config, total_steps=total_steps, steps_per_epoch=steps_per_epoch, devices=devices,
      num_classes=data.num_classes, setup=setup) if peak_flops else None
  step_compiled.result()
  logging.info("Train step compiled %.1f s after start-up began (overlapped with it).",
               time.time() - compile_start)

  writer = metrics_io.make_writer(workdir, config)
  monitor = collapse.Monitor(config)
  profile = profiler.Window(config.profile_steps, workdir, start_step)
  preemption = _Preemption()
  preemption.install()
  final_metrics: dict[str, Any] = {}
  step = start_step
  losses_since_log: list[float] = []
  pending = None  # (step, loss array) of the previous step: checked one step late, so the
  #                 host never waits for the step it just dispatched.
  timer = time.time()
  timer_step = start_step
  try:
    while step < total_steps:
      batch = next(data_iter)
      profile.before_step(step, train_state)
      train_state, metrics = train_step(train_state, batch)
      step += 1
      profile.after_step(step, train_state)
      if pending is not None:
        prev_step, prev_loss = pending
        loss_value = float(prev_loss)
        _check_finite(prev_step, loss_value, checkpointer)
        losses_since_log.append(loss_value)
      pending = (step, metrics["train/loss"])

      is_last = step == total_steps
      log_now = is_last or (config.log_every and step % config.log_every == 0)
      eval_now = evaluator is not None and (
          is_last or (config.eval_every and step % config.eval_every == 0))
      save_now = is_last or (config.checkpoint_every and step % config.checkpoint_every == 0)
      # Across hosts the flag is agreed on at log steps only: a collective per step would
      # stall the pipeline, and a preemption notice gives tens of seconds.
      stop_now = (preemption.any_process_requested() if jax.process_count() > 1 and log_now
                  else preemption.requested and jax.process_count() == 1)
      if log_now or save_now or stop_now:
        # Waits for this step; only at log/save points. One transfer for the three checks.
        loss_value, grad_norm, state_finite = jax.device_get(
            (pending[1], metrics["train/grad_norm"],
             ckpt_lib.all_finite((train_state["params"], train_state["method_state"]))))
        loss_value = float(loss_value)
        _check_finite(step, loss_value, checkpointer, grad_norm=float(grad_norm),
                      state_finite=bool(state_finite))
        losses_since_log.append(loss_value)
        pending = None
      scalars: dict[str, float] = {}
      eta = None
      if log_now:
        elapsed = time.time() - timer
        steps_per_sec = (step - timer_step) / max(elapsed, 1e-9)
        scalars.update({name: float(value) for name, value in jax.device_get(metrics).items()})
        scalars["train/loss"] = float(np.mean(losses_since_log))
        scalars["train/lr"] = float(schedule(step - 1))
        scalars["train/steps_per_sec"] = steps_per_sec
        scalars["train/images_per_sec"] = steps_per_sec * data.images_per_step
        if model_flops:
          scalars["train/mfu_model"] = steps_per_sec * model_flops / (peak_flops * mesh.size)
        scalars["train/epoch"] = step / steps_per_epoch
        eta = (total_steps - step) / max(steps_per_sec, 1e-9)
        losses_since_log = []
        timer, timer_step = time.time(), step
        monitor.check(step, scalars)
      if eval_now:
        scalars.update(evaluator.evaluate(train_state["params"], train_state["method_state"],
                                          protocols))
        if config.visualize and jax.process_index() == 0:
          viz.write_method_images(method, train_state, evaluator, writer, workdir, step,
                                  config.eval.num_vis_images)
        timer, timer_step = time.time(), step  # Eval time is not training throughput.
      if scalars:
        # One line per log step, with the evaluation when it ran at this step.
        logging.info("%s", progress.step_line(step, total_steps, scalars, eta_seconds=eta))
        writer.write_scalars(step, scalars)
        writer.flush()
        final_metrics.update(scalars)
      if save_now or stop_now:
        checkpointer.save(step, train_state, data_iter, force=True)
      if stop_now and not is_last:
        if preemption.signal_name == "SIGINT":
          logging.warning("Stopped (Ctrl-C): checkpoint saved at step %d; the same command "
                          "resumes from it.", step)
        else:  # launch/supervise.sh restarts a run that prints this line.
          logging.warning("Preempted: checkpoint saved at step %d; exiting.", step)
        checkpointer.wait()
        final_metrics["preempted_at"] = step
        return final_metrics
  finally:
    profile.close()
    data_iter.close()
    preemption.uninstall()
    checkpointer.close()
    writer.close()

  if config.export_at_end:
    paths = ckpt_lib.export_params(train_state["params"], workdir_path / "export")
    final_metrics["export"] = paths
  final_metrics["step"] = step
  _print_summary(final_metrics, workdir)
  return final_metrics


def _print_summary(final_metrics, workdir) -> None:
  if jax.process_index() != 0:
    return
  workdir = pathlib.Path(workdir).resolve()
  if "eval/knn_top1" in final_metrics:
    print(f"final k-NN top-1: {100 * final_metrics['eval/knn_top1']:.1f}%")
  print(f"TensorBoard logs: {workdir / 'tensorboard'}")
  print(f"Checkpoints:      {workdir / 'checkpoints'}")
  if "export" in final_metrics:
    print(f"Exported params:  {final_metrics['export']['orbax']} and "
          f"{final_metrics['export']['npz']}")


def split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.key=value` overrides from the flags absl should parse."""
  overrides, rest = [], []
  for arg in argv:
    (overrides if arg.startswith("--config.") else rest).append(arg)
  return rest, overrides


def load_config_with_overrides(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
  config = config_lib.load_config(spec)
  config.lock()
  config_lib.apply_overrides(config, overrides)
  config_lib.validate(config)
  return config


def _quiet_library_logs() -> None:
  """Orbax logs every file it writes at INFO; keep the run's own progress readable."""
  noisy = ("orbax", "grain", "tensorstore")
  logging.get_absl_logger().addFilter(
      lambda record: record.levelno >= std_logging.WARNING
      or not any(name in record.pathname for name in noisy))


def main(argv, overrides=()):
  _quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  spec, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if not spec or not workdir:
    raise app.UsageError("Both --config and --workdir are required, e.g. "
                         "--config configs/mae.py:smoke --workdir /tmp/mae_smoke")
  with errors.clean_exit("train"):
    config = load_config_with_overrides(spec, list(overrides))
    distributed.initialize_from_flags()
    summary.print_closing_lines(train_and_evaluate(config, workdir), workdir)


def _config_spec(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def run():
  if sys.argv[1:] == ["--list"]:
    print(catalog.describe())
    return
  rest, overrides = split_config_overrides(errors.pop_debug_flag(sys.argv))
  spec = _config_spec(rest)
  if spec:
    try:  # A bad config fails here, with just the message, before any JAX work starts.
      load_config_with_overrides(spec, overrides)
    except config_lib.ConfigError as e:
      if errors.debug_enabled():
        raise
      sys.exit(f"Config error: {e}")
  _define_flags()
  try:
    app.run(functools.partial(main, overrides=overrides), argv=rest)
  except SystemExit as exit_:
    if exit_.code not in (0, None) and trainer.compile_in_flight():
      _exit_now(exit_.code)
    raise


def _exit_now(code: int | str) -> None:
  """Exits with `code` (a message is printed, status 1, as `sys.exit` would) without joining
  the threads left: a step compile still running would otherwise hold the exit for as long as
  XLA takes (up to minutes on an accelerator) after the error or Ctrl-C was reported. Runs
  after the loop's own clean-up (checkpoints waited for, lock released, writers closed)."""
  if isinstance(code, str):
    print(code, file=sys.stderr)
    code = 1
  std_logging.shutdown()  # Flushes absl's handlers.
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == "__main__":
  run()
