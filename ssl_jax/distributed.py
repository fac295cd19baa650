"""Joining a multi-process JAX job (several hosts, or one process per GPU) before any JAX work.

Where the processes come from, in order:
* explicit flags `--coordinator_address HOST:PORT --num_processes N --process_id I` (all three;
  launch/gpu_multinode.sh `run` passes them, like torchrun's --master_addr/--nnodes/--node_rank);
* SLURM: inside an `srun` step with SLURM_NTASKS > 1 (launch/gpu_multinode.sh `sbatch`);
* Open MPI: `mpirun` with OMPI_COMM_WORLD_SIZE > 1;
* Cloud TPU pods: nothing to do here; the TPU runtime discovers the pod's hosts itself, as before.
For SLURM and Open MPI, `jax.distributed.initialize()` reads the coordinator (first node of the
step / the ORTE URI), process count and rank from those same variables (jax/_src/clusters); this
module only decides that there are several processes, so a single-process run never waits on a
coordinator.

After joining, every process runs the same program on its share of the global batch; process 0
alone writes metrics, TensorBoard, images and exports, while checkpoints are written
collectively (each process its shards).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
from absl import app, flags, logging

# The variables jax's SlurmCluster requires: they exist only inside an `srun` step.
_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
_OPENMPI = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How to call `jax.distributed.initialize`; None fields are read by JAX from `source`."""
  source: str                          # 'flags', 'slurm' or 'openmpi'
  num_processes: int
  process_id: int
  coordinator_address: str | None = None


def _int(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ[name])
  except ValueError:
    raise ValueError(f"Environment variable {name}={environ[name]!r} is not an integer.") from None


def plan(environ: Mapping[str, str] = os.environ, *, coordinator_address: str | None = None,
         num_processes: int | None = None, process_id: int | None = None) -> Plan | None:
  """The multi-process job this process belongs to, or None for a single-process run.

  Raises:
    ValueError: flags given partly or out of range, naming what to fix.
  """
  explicit = {"--coordinator_address": coordinator_address, "--num_processes": num_processes,
              "--process_id": process_id}
  given = [name for name, value in explicit.items() if value not in (None, "")]
  if given:
    missing = [name for name in explicit if name not in given]
    if missing:
      raise ValueError(f"{', '.join(given)} given without {', '.join(missing)}; a multi-process "
                       "run needs all three (or none, to read SLURM / Open MPI variables).")
    if ":" not in coordinator_address:
      raise ValueError(f"--coordinator_address={coordinator_address!r} must be HOST:PORT, e.g. "
                       "node0:12355 (the host of process 0 and a free port).")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                       f"{num_processes}).")
    if num_processes == 1:
      return None
    return Plan("flags", num_processes, process_id, coordinator_address)
  if all(name in environ for name in _SLURM_STEP) and _int(environ, "SLURM_NTASKS") > 1:
    return Plan("slurm", _int(environ, "SLURM_NTASKS"), _int(environ, "SLURM_PROCID"))
  if all(name in environ for name in _OPENMPI) and _int(environ, "OMPI_COMM_WORLD_SIZE") > 1:
    return Plan("openmpi", _int(environ, "OMPI_COMM_WORLD_SIZE"),
                _int(environ, "OMPI_COMM_WORLD_RANK"))
  return None


def initialize(job: Plan | None) -> None:
  """Joins `job` (no-op for None). Must run before the first JAX computation."""
  if job is None:
    return
  # CPU-only processes need a collectives backend for cross-process reductions (gloo ships with
  # jaxlib); accelerators use their own (NCCL, ICI) and ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if job.source == "flags":
    jax.distributed.initialize(coordinator_address=job.coordinator_address,
                               num_processes=job.num_processes, process_id=job.process_id)
  else:
    jax.distributed.initialize()     # coordinator, count and rank from the cluster variables
  logging.info("Joined a %d-process job (%s) as process %d.", jax.process_count(), job.source,
               jax.process_index())


def define_flags() -> None:
  flags.DEFINE_string("coordinator_address", None,
                      "HOST:PORT of process 0, for a multi-process run without SLURM/Open MPI.")
  flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator_address).")
  flags.DEFINE_integer("process_id", None, "This process's rank in [0, --num_processes).")


def initialize_from_flags() -> None:
  """`initialize(plan(...))` with the flags of `define_flags` and this process's environment."""
  args = flags.FLAGS
  try:
    job = plan(os.environ, coordinator_address=args.coordinator_address,
               num_processes=args.num_processes, process_id=args.process_id)
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  initialize(job)
