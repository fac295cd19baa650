r"""Where a train step's device time goes: a `jax.profiler` trace of a few steps, read back here.

    python bench/profile_step.py --config configs/mae.py:vit_b16,imagenet --batch_size 256 \
        --steps 5 [--top 25] [key.path=value ...]

Compiles the config's jitted step, traces `--steps` steps, and sums the device time of every
compiled op (XLA's `hlo_op` on each kernel or thunk event: the GPU's streams, or the CPU's thunk
executor) per step. Each op gets a category from the compiled HLO: `matmul` (dots, cuBLAS and
Triton gemms), `convolution`, `attention` (cuDNN's fused attention), `collective`, `copy`
(copies and transposes), `reduction` (fusions that reduce), `elementwise` (other fusions),
`control` (while/conditional bodies' bookkeeping), or the HLO opcode. Prints JSON lines: one
`profile_category` per category (ms per step and device, share of the op time), then the
`--top` costliest ops (`profile_op`: name, category, ms per step, output shape, the JAX op it
came from), then
`profile_summary` (wall ms per step beside the summed op time: a large gap is host or launch
time). It needs no TensorBoard: the trace is parsed by `jax.profiler.ProfileData`.

On a GPU, run it with `XLA_FLAGS=--xla_gpu_enable_command_buffer=` (the suite's `profile` stage
does): kernels replayed from a CUDA graph may reach the trace without the op they belong to.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench import common  # noqa: E402
from ssl_jax import trainer  # noqa: E402

_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
# name = shape opcode(: the shape may be a tuple "(f32[2]{0}, s8[16]{0})".
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (\((?:[^()]|\([^()]*\))*\)|\S+) ([\w\-]+)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def parse_hlo(hlo_text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
  """Compiled HLO text -> ({instruction name: its line}, {computation name: its lines})."""
  instructions: dict[str, str] = {}
  computations: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      current = computations.setdefault(header.group(1), [])
      continue
    if line.strip() == "}":
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      instructions[match.group(1)] = line
      current.append(line)
  return instructions, computations


def _calls_opcode(line: str, computations: dict[str, list[str]], opcodes: tuple[str, ...],
                  seen: set[str]) -> bool:
  """Whether a computation `line` calls (at any depth) holds an instruction of `opcodes`."""
  for called in _CALLS.findall(line):
    if called in seen:
      continue
    seen.add(called)
    for inner in computations.get(called, ()):
      match = _INSTRUCTION.match(inner)
      if match and match.group(3) in opcodes:
        return True
      if _calls_opcode(inner, computations, opcodes, seen):
        return True
  return False


def categorize(line: str, computations: dict[str, list[str]]) -> str:
  """The profile category of one compiled HLO instruction (module docstring)."""
  opcode = _INSTRUCTION.match(line).group(3)
  lowered = line.lower()
  if "fmha" in lowered or "flash_attention" in lowered or "dot_product_attention" in lowered:
    return "attention"
  if opcode.startswith(_COLLECTIVES):
    return "collective"
  if "$gemm" in lowered or "$matmul" in lowered or "triton_gemm" in lowered or opcode == "dot":
    return "matmul"
  if "$conv" in lowered or opcode == "convolution":
    return "convolution"
  if opcode in ("fusion", "custom-call", "call", "async-start"):
    if _calls_opcode(line, computations, ("dot",), set()):
      return "matmul"
    if _calls_opcode(line, computations, ("convolution",), set()):
      return "convolution"
    if opcode == "fusion" and _calls_opcode(line, computations, ("reduce", "reduce-window"),
                                            set()):
      return "reduction"
    if opcode == "fusion" and _calls_opcode(line, computations, ("copy", "transpose"), set()) \
        and not _calls_opcode(line, computations, ("add", "multiply", "exponential"), set()):
      return "copy"
    return "elementwise" if opcode == "fusion" else opcode
  if opcode in ("copy", "transpose", "copy-start", "copy-done"):
    return "copy"
  if opcode in ("while", "conditional"):
    return "control"
  return opcode


def op_times_ns(xspace_path: str, module_substring: str) -> dict[str, float]:
  """Summed duration (ns) per compiled op of the trace's events from modules whose name holds
  `module_substring`: on a GPU the kernels of its streams (their `hlo_op` stat), else the
  device's "XLA Ops" line (events named by op); on CPU the thunk executor's events."""
  profile = jax.profiler.ProfileData.from_file(xspace_path)
  planes = list(profile.planes)
  device_planes = [p for p in planes if p.name.startswith("/device:")]
  totals: dict[str, float] = collections.defaultdict(float)
  for plane in device_planes or planes:
    for line in plane.lines:
      # A GPU plane repeats its kernels on derived lines ("XLA Ops", "XLA Modules"); its
      # streams hold each launch once.
      if device_planes and not line.name.startswith("Stream"):
        continue
      for event in line.events:
        stats = dict(event.stats)
        op, module = stats.get("hlo_op"), str(stats.get("hlo_module", ""))
        if op and module_substring in module:
          totals[str(op)] += event.duration_ns
  if not totals:  # Kernels without op stats (a TPU, or another profiler version).
    for plane in device_planes:
      for line in plane.lines:
        if line.name == "XLA Ops":
          for event in line.events:
            totals[event.name] += event.duration_ns
  return dict(totals)


def profile(config, *, steps: int, top: int, devices=None) -> list[dict]:
  """The step's op time per category and its `top` costliest ops, per step and per device (the
  trace sums every device's kernels; `devices`: the mesh's, default all)."""
  setup = trainer.build(config, total_steps=1000, steps_per_epoch=100, devices=devices)
  batch = common.random_batch(setup, config)
  state = setup.init_state()
  compiled = setup.step.lower(state, batch).compile()
  instructions, computations = parse_hlo(compiled.as_text())
  for _ in range(2):  # warm-up: allocations, autotuned kernels loaded
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory(prefix="profile_step_") as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    wall = (time.perf_counter() - start) / steps
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
      raise SystemExit(f"profile_step: the trace in {trace_dir} wrote no .xplane.pb")
    times = op_times_ns(paths[-1], "train_step")
  per_step_ms = {op: ns / steps / setup.mesh.size / 1e6 for op, ns in times.items()}
  category = {op: categorize(instructions[op], computations) if op in instructions else "unknown"
              for op in per_step_ms}
  total_ms = sum(per_step_ms.values())
  by_category: dict[str, float] = collections.defaultdict(float)
  for op, ms in per_step_ms.items():
    by_category[category[op]] += ms
  records = []
  for name, ms in sorted(by_category.items(), key=lambda item: -item[1]):
    records.append({"bench": "profile_category", "category": name, "ms_per_step": ms,
                    "share": ms / total_ms if total_ms else None})
  for op, ms in sorted(per_step_ms.items(), key=lambda item: -item[1])[:top]:
    line = instructions.get(op, "")
    match = _INSTRUCTION.match(line)
    source = _OP_NAME.search(line)
    records.append({"bench": "profile_op", "op": op, "category": category[op],
                    "ms_per_step": ms, "share": ms / total_ms if total_ms else None,
                    "shape": match.group(2) if match else None,
                    "source": source.group(1)[-160:] if source else None})
  records.append({"bench": "profile_summary", "wall_ms_per_step": wall * 1e3,
                  "op_ms_per_step": total_ms, "ops": len(per_step_ms), "steps": steps,
                  "devices": setup.mesh.size})
  return records


def main():
  parser = common.config_parser(__doc__)
  parser.add_argument("--top", type=int, default=25, help="how many of the costliest ops")
  args = parser.parse_args()
  config = common.load_config(args.config, args.overrides, args.batch_size)
  base = {"config": args.config, "batch_size": config.batch_size, "dtype": config.model.dtype,
          "device": jax.devices()[0].device_kind, "overrides": args.overrides}
  for record in profile(config, steps=args.steps, top=args.top):
    common.emit(base | record)


if __name__ == "__main__":
  main()
