"""The trainer setup: config -> method, optimizer and schedule, train state, shardings, step.

One home for what the loop (`ssl_jax.train`), the benchmarks (`bench/`) and the tests all need
before their first step, so none of them retypes it::

  setup = trainer.build(config, devices=jax.devices(), total_steps=1000, steps_per_epoch=100)
  state = setup.init_state()                       # params/opt state born in their shardings
  state, metrics = setup.step(state, setup.global_batch(host_batch))

The training data (this process's shard of every stream) is built by
`ssl_jax.data.streams.make_train_data`; the loop that runs the steps is `ssl_jax.train`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from ssl_jax import config_lib, flops, optim, parallel
from ssl_jax.data import streams
from ssl_jax.methods import base, build_method, online_probe


def make_train_step(method, tx, *, grad_accum_steps: int, base_rng: jax.Array):
  """The pure step: (train_state, batch) -> (train_state, metrics).

  `batch` is any pytree of batch-leading arrays: `{'image', 'label'}`, or one such dict per
  data stream; gradient accumulation splits every leaf the same way.
  """

  def loss_and_grads(params, method_state, batch, rng, step):
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)
    (loss, (metrics, method_state)), grads = grad_fn(params, method_state, batch, rng, step)
    return loss, metrics, method_state, grads

  def train_step(train_state, batch):
    step = train_state["step"]
    rng = jax.random.fold_in(base_rng, step)
    params = train_state["params"]
    if grad_accum_steps == 1:
      loss, metrics, method_state, grads = loss_and_grads(
          params, train_state["method_state"], batch, rng, step)
    else:
      # Microbatch i takes rows i, i+k, i+2k...: each device keeps its own rows, no reshuffle.
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps,
                                           *x.shape[1:]), 0, 1), batch)

      def body(carry, inputs):
        method_state, grad_sum, loss_sum = carry
        index, microbatch = inputs
        loss, metrics, method_state, grads = loss_and_grads(
            params, method_state, microbatch, jax.random.fold_in(rng, index), step)
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
        return (method_state, grad_sum, loss_sum + loss), metrics

      zeros = jax.tree.map(jnp.zeros_like, params)
      (method_state, grad_sum, loss_sum), metrics = jax.lax.scan(
          body, (train_state["method_state"], zeros, jnp.zeros((), jnp.float32)),
          (jnp.arange(grad_accum_steps), micro))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grad_sum)
      loss = loss_sum / grad_accum_steps
      metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
    updates, opt_state = tx.update(grads, train_state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    method_state = method.update_state(params, method_state, step)
    metrics = {f"train/{name}": value for name, value in metrics.items()}
    metrics["train/loss"] = loss
    metrics["train/grad_norm"] = optax.global_norm(grads)
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state,
                 "method_state": method_state}
    return new_state, metrics

  return train_step


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """Everything built from the config before the first step (see `build`)."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  method: base.Method
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  abstract_state: Any       # ShapeDtypeStructs of the train state; nothing allocated
  shardings: Any            # of the train state
  init_rng: jax.Array
  step_rng: jax.Array
  step: Callable            # jitted (state, global batch) -> (state, metrics); donates state
  _init_fn: Callable

  def global_batch(self, local_batch: Any) -> Any:
    """This process's host batch (any pytree of numpy arrays) -> one global sharded pytree."""
    return parallel.host_to_global(local_batch, self.mesh)

  def sample_batch(self) -> Any:
    """A global batch of zeros with the shapes and structure the step receives."""
    return self.global_batch(streams.zeros_batch(self.config,
                                                 process_count=jax.process_count()))

  def step_arg_shapes(self) -> tuple[Any, Any]:
    """The step's (state, batch) as ShapeDtypeStructs in the shardings the loop passes.

    Tracing `step` on these (e.g. to count FLOPs) fills jit's trace cache for the loop's first
    call: jax keys that cache on shardings too, so unsharded shapes would trace the step twice
    (a ViT-B step: seconds of start-up)."""
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         self.abstract_state, self.shardings)
    batch_sharding = parallel.batch_sharding(self.mesh)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding),
                         streams.batch_shapes(self.config))
    return state, batch

  def compile_step_in_background(self) -> concurrent.futures.Future:
    """Starts tracing and compiling `step` for the loop's shapes in a thread; returns its future.

    XLA compiles without the GIL, so the compile (tens of seconds for a ViT-B step on a GPU)
    overlaps what start-up does meanwhile: initialising the state, restoring a checkpoint,
    starting the input pipeline. The first `step(state, batch)` then finds the executable in
    jit's caches (same function, shapes and shardings) instead of compiling. Call `.result()`
    before the first step: it re-raises whatever the compile raised."""
    def compile_step():
      with method_errors_as_config_errors(self.config):
        return self.step.lower(*self.step_arg_shapes()).compile()

    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile_step")
    future = executor.submit(compile_step)
    executor.shutdown(wait=False)
    _COMPILES_IN_FLIGHT.add(future)
    future.add_done_callback(_COMPILES_IN_FLIGHT.discard)
    return future

  def init_state(self) -> Any:
    """A fresh train state, initialised directly in its shardings."""
    return jax.jit(self._init_fn, out_shardings=self.shardings)(self.init_rng,
                                                                self.sample_batch())


# Background compiles not finished yet: XLA cannot cancel one, and Python's exit joins its
# thread, so a command line that fails or is interrupted meanwhile exits without waiting
# (`compile_in_flight`, used by `ssl_jax.train.run`).
_COMPILES_IN_FLIGHT: set[concurrent.futures.Future] = set()


def compile_in_flight() -> bool:
  """Whether a `compile_step_in_background` compile is still running."""
  return any(not future.done() for future in _COMPILES_IN_FLIGHT)


@contextlib.contextmanager
def method_errors_as_config_errors(config: ml_collections.ConfigDict):
  """A `ValueError` raised inside is a `ConfigError` naming the method.

  Methods and their losses check their `method.*` / `model.*` values where they use them: when
  the method is built and initialised (e.g. a view size the patch size does not divide) and
  while the train step traces (e.g. a teacher temperature of 0, checked by the DINO loss). Both
  are config errors, reported as one (one line on the command line; `--debug` shows where).
  """
  try:
    yield
  except config_lib.ConfigError:
    raise
  except ValueError as e:
    raise config_lib.ConfigError(f"{config.method.name}: {e}") from e


def _check_head_covers_the_labels(config: ml_collections.ConfigDict,
                                  num_classes: int | None) -> None:
  """A classifier head narrower than the training labels is refused: a label past the head's
  last class one-hot encodes to a row of zeros, which trains on nothing (or gives a NaN loss)."""
  head_classes = config.method.get("num_classes")
  if num_classes and head_classes and int(num_classes) > int(head_classes):
    raise config_lib.ConfigError(
        f"method.num_classes={head_classes}, but the training labels have {num_classes} "
        f"classes; set --config.method.num_classes={num_classes}.")


def build(config: ml_collections.ConfigDict, *, total_steps: int, steps_per_epoch: int,
          devices: Sequence[jax.Device] | None = None,
          num_classes: int | None = None) -> TrainSetup:
  """The method, optimizer, state shardings and jitted step of `config` on `devices`.

  Args:
    config: a run config (validated by the caller).
    total_steps / steps_per_epoch: the run's length, for schedules stated in steps or epochs.
    devices: the mesh's devices (default: all).
    num_classes: classes of the training labels; needed when `eval.online_probe` is on.

  Nothing large is allocated: shapes come from `jax.eval_shape`; `init_state()` allocates.
  """
  _check_head_covers_the_labels(config, num_classes)
  mesh = parallel.make_mesh(config.mesh, devices)
  sizes = streams.batch_sizes(config)
  for name, batch_size in ({"": sizes} if isinstance(sizes, int) else sizes).items():
    parallel.check_batch_size(batch_size, mesh,
                              what=f"data.streams.{name}.batch_size" if name else "batch_size")
  init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  sample = streams.batch_shapes(config)  # global shapes
  with method_errors_as_config_errors(config):
    method = build_method(config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    if config.eval.online_probe:
      method = online_probe.with_online_probe(method, num_classes)
    params_shape = jax.eval_shape(lambda r, b: method.init(r, b)[0], init_rng, sample)
  tx, schedule = optim.build_optimizer(config, params_shape, total_steps=total_steps,
                                       steps_per_epoch=steps_per_epoch)

  def init_fn(rng, batch):
    params, method_state = method.init(rng, batch)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params), "method_state": method_state}

  abstract_state = jax.eval_shape(init_fn, init_rng, sample)
  shardings = parallel.state_shardings(abstract_state, mesh)
  # on_mesh: ops that must be split over the batch by hand (Pallas kernels) see the mesh.
  step = jax.jit(
      parallel.on_mesh(make_train_step(method, tx, grad_accum_steps=config.optim.grad_accum_steps,
                                       base_rng=step_rng), mesh),
      in_shardings=(shardings, parallel.batch_sharding(mesh)),
      out_shardings=(shardings, parallel.replicated(mesh)),
      donate_argnums=(0,))
  return TrainSetup(config=config, mesh=mesh, method=method, schedule=schedule, tx=tx,
                    abstract_state=abstract_state, shardings=shardings, init_rng=init_rng,
                    step_rng=step_rng, step=step, _init_fn=init_fn)


def model_flops_per_step(config: ml_collections.ConfigDict, *, total_steps: int,
                         steps_per_epoch: int, devices: Sequence[jax.Device] | None = None,
                         num_classes: int | None = None,
                         setup: TrainSetup | None = None) -> float:
  """The networks' forward + backward matmul FLOPs of one step of `config`: `mfu_model`'s
  numerator (ssl_jax/flops.py), counted from shapes alone on the step of the same config with
  remat off and plain attention (`flops.model_flops_config`). Tracing only: no compile.

  `setup`, the caller's own `build(config, ...)`, is counted as it is when `config` already has
  remat off and plain attention (the default), so start-up builds no second setup."""
  counted = flops.model_flops_config(config)
  if setup is None or counted.to_dict() != config.to_dict():
    setup = build(counted, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                  devices=devices, num_classes=num_classes)
  with method_errors_as_config_errors(config):
    return flops.count_flops(setup.step, *setup.step_arg_shapes()).networks
