"""Device mesh, shardings, and host-local batches -> global `jax.Array`s.

One 2-D mesh with axes ('data', 'fsdp'). The batch is sharded over both axes (every device gets
its slice of the batch). Parameters and optimizer state are either replicated, or (fsdp > 1)
sharded on their largest dimension divisible by the fsdp size, ZeRO-3 style: XLA inserts the
all-gathers before use and reduce-scatters for gradients. No pmap anywhere: `jax.jit` with
explicit shardings runs the same program on one CPU and on a pod.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssl_jax import errors

BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this are replicated even under FSDP: sharding a bias saves nothing and
# costs a collective.
FSDP_MIN_SIZE = 2**12


class MeshError(errors.UserError, ValueError):
  """The mesh or a batch size does not fit the devices (a config value to change)."""


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp') mesh; `data=-1` takes every device `fsdp` leaves."""
  devices = list(jax.devices() if devices is None else devices)
  fsdp = int(mesh_config.fsdp)
  data = int(mesh_config.data)
  if fsdp < 1:
    raise MeshError(f"mesh.fsdp must be >= 1, got {fsdp}.")
  if data == -1:
    if len(devices) % fsdp:
      raise MeshError(f"mesh.fsdp={fsdp} does not divide the {len(devices)} devices; use a "
                      f"divisor of {len(devices)} (mesh.fsdp=1 replicates the params).")
    data = len(devices) // fsdp
  if data * fsdp != len(devices):
    raise MeshError(f"mesh.data * mesh.fsdp = {data} * {fsdp} = {data * fsdp}, but there are "
                    f"{len(devices)} devices. Set mesh.data=-1 to use all of them.")
  return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, *, what: str = "batch_size") -> None:
  """Fails at start-up, not mid-run, when the batch cannot be split evenly."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    lower = global_batch_size // num_devices * num_devices
    examples = f"{lower} or {lower + num_devices}" if lower else f"{num_devices}"
    raise MeshError(
        f"{what}={global_batch_size} is not divisible by the {num_devices} devices of the mesh "
        f"{dict(mesh.shape)}. Use a multiple of {num_devices}, e.g. {examples}.")
  if global_batch_size % jax.process_count():
    raise MeshError(f"{what}={global_batch_size} is not divisible by the "
                    f"{jax.process_count()} processes.")


def _fsdp_spec(shape: Sequence[int], fsdp_size: int) -> P:
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  # Largest dimension that splits evenly; ties go to the last (contiguous) one.
  order = sorted(range(len(shape)), key=lambda i: (shape[i], i), reverse=True)
  for axis in order:
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """Shardings for a pytree of arrays (params, optimizer state, method state)."""
  fsdp_size = mesh.shape["fsdp"]

  def sharding(leaf):
    shape = getattr(leaf, "shape", ())
    return NamedSharding(mesh, _fsdp_spec(shape, fsdp_size))

  return jax.tree.map(sharding, abstract_state)


# The mesh of the function being traced, for the few ops that must be split over the batch by
# hand: XLA's SPMD partitioner cannot split a Pallas kernel (a custom call), so it would gather
# the whole batch onto every device (`models.splash.splash_attention` shard_maps instead).
_TRACING_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    "tracing_mesh", default=None)


def current_mesh() -> Mesh | None:
  """The mesh of the innermost `on_mesh` function being run (traced), or None outside any."""
  return _TRACING_MESH.get()


def on_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` run with `current_mesh()` = `mesh`. Wrap the function given to `jax.jit`: the
  context is then set while jit traces it, in whichever thread traces (a background compile
  too), and costs nothing at run time."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    token = _TRACING_MESH.set(mesh)
    try:
      return fn(*args, **kwargs)
    finally:
      _TRACING_MESH.reset(token)

  return wrapped


def host_to_global(local_batch: Any, mesh: Mesh) -> Any:
  """Turns each process's slice of the batch (numpy) into one global, batch-sharded array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def per_device_bytes(tree: Any) -> int:
  """Bytes that the most loaded device holds for a pytree of (sharded) jax.Arrays."""
  totals: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
  return max(totals.values()) if totals else 0
