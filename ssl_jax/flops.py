"""Model FLOPs of a train step on any backend, and MFU against the chip's bf16 peak.

Why not XLA's cost analysis: on GPU the compiled module's matmuls and convolutions are cuBLAS /
cuDNN custom calls that `Compiled.cost_analysis()` does not count (7.2e11 FLOPs for an MAE
ViT-B/16 step instead of 1.54e13, issue 13), and `Lowered.cost_analysis()` is not implemented
under the PJRT C API (GPU, TPU). So FLOPs are counted here on the step's jaxpr, before any
backend sees it: the same number on CPU, GPU and TPU.

What is counted (the PaLM convention, Chowdhery et al. 2022, appendix B: matmul FLOPs only):
  * `dot_general`: 2 * prod(output shape) * prod(contracted sizes);
  * `conv_general_dilated`: 2 * prod(output shape) * prod(kernel shape) / output features
    (also right for grouped and batch-grouped convolutions, whose kernel holds in/groups),
    divided by prod(lhs_dilation): a strided convolution's input gradient dilates its input with
    zeros that no kernel multiplies (counting them made it stride^2 times its forward);
  * inside `scan` times its length, `cond` its costliest branch, `while` one trip (unknown).
Elementwise work (norms, softmax, optimizer update) is left out, as in every MFU figure.

Two totals of one step:
  * `networks`: the matmuls inside Flax modules (the method's encoders, heads, decoders,
    discriminators; forward and backward), i.e. no augmentation and no loss-side einsums. A jaxpr
    equation is "inside a network" when its name stack holds the scope of a Flax module: Flax
    names the scope of `Module.apply` after the module's class. This is `mfu_model`'s numerator
    when counted on the step with remat off (`model_flops_config`: recomputation is not model
    work) and plain attention (the fused kernels are custom calls with no jaxpr matmuls);
  * `all`: every matmul of the step as configured (remat recomputation, augmentation resizes and
    loss einsums included): `mfu_hardware`'s numerator.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
from jax.extend import core as jex_core
import ml_collections

# Dense bf16 peaks (FLOP/s, no sparsity), matched against `jax.Device.device_kind` in this order
# (the first substring found wins, so the more specific names come first). Sources:
#   H100 SXM 989.4 and H100 PCIe 756: NVIDIA H100 Tensor Core GPU datasheet (BF16, dense = half
#     the "with sparsity" figure); H200 989: NVIDIA H200 datasheet (same SXM tensor cores);
#   A100 312: NVIDIA A100 datasheet;
#   TPU v4 275, v5e 197, v5p 459, v6e (Trillium) 918: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e}
#     "peak compute per chip (bf16)". JAX names v5e "TPU v5 lite", v6e "TPU v6 lite", v5p "TPU v5".
BF16_PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
)


def bf16_peak_flops(device_kind: str) -> float | None:
  """The published dense bf16 peak of a chip named like `jax.Device.device_kind`, or None."""
  for name, peak in BF16_PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """Matmul FLOPs of one call: inside Flax modules (`networks`) and in total (`all`)."""
  networks: float
  all: float


def _flax_module_names() -> frozenset[str]:
  """Class names of every Flax module defined so far (the scope `Module.apply` opens)."""
  names, stack = set(), [nn.Module]
  while stack:
    cls = stack.pop()
    names.add(cls.__name__)
    stack.extend(cls.__subclasses__())
  return frozenset(names)


def _in_module(eqn, module_names: frozenset[str]) -> bool:
  return any(getattr(entry, "name", None) in module_names
             for entry in eqn.source_info.name_stack.stack)


def _matmul_flops(eqn) -> float:
  """FLOPs of one dot_general or convolution equation, else 0."""
  name = eqn.primitive.name
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs_shape = eqn.invars[0].aval.shape
    contracted = math.prod(lhs_shape[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * contracted
  if name == "conv_general_dilated":
    kernel_shape = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    per_output = math.prod(kernel_shape) / kernel_shape[out_feature_dim]
    # A strided convolution's input gradient is a convolution of the output gradient dilated
    # by the stride (`lhs_dilation`): of its kernel taps only 1 / prod(dilation) meet a real
    # value, the rest multiply the inserted zeros, which no GPU or TPU kernel computes. Counted
    # as real taps it has its forward's FLOPs (exactly when the kernel divides by the stride).
    zero_taps = math.prod(eqn.params.get("lhs_dilation") or (1,))
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output / zero_taps
  return 0.0


def _tally(jaxpr, keys_of: Callable, module_names: frozenset[str],
           inside: bool) -> tuple[float, dict]:
  """(all matmul FLOPs, FLOPs per key) of `jaxpr`; `keys_of(eqn, inside_a_module)` names the
  keys a matmul equation counts under. A `scan` body counts times its length, a `cond` its
  costliest branch (one branch runs)."""
  total, per_key = 0.0, {}

  def add(flops: float, keyed: dict, times: float = 1.0) -> None:
    nonlocal total
    total += times * flops
    for key, value in keyed.items():
      per_key[key] = per_key.get(key, 0.0) + times * value

  for eqn in jaxpr.eqns:
    eqn_inside = inside or _in_module(eqn, module_names)
    if eqn.primitive.name == "cond":
      add(*max((_tally(branch.jaxpr, keys_of, module_names, eqn_inside)
                for branch in eqn.params["branches"]), key=lambda tally: tally[0]))
      continue
    flops = _matmul_flops(eqn)
    if flops:
      add(flops, dict.fromkeys(keys_of(eqn, eqn_inside), flops))
    times = float(eqn.params["length"]) if eqn.primitive.name == "scan" else 1.0
    for sub in jex_core.jaxprs_in_params(eqn.params):
      add(*_tally(sub, keys_of, module_names, eqn_inside), times=times)
  return total, per_key


def count_flops(fn: Callable, *args, **kwargs) -> StepFlops:
  """Matmul FLOPs of `fn(*args, **kwargs)` from its jaxpr (tracing only: no compile, no device
  work; arrays may be `jax.ShapeDtypeStruct`s)."""
  total, per_key = _tally(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr,
                          lambda eqn, inside: ("networks",) if inside else (),
                          _flax_module_names(), inside=False)
  return StepFlops(networks=per_key.get("networks", 0.0), all=total)


def matmul_flops_by_dtype(fn: Callable, *args, **kwargs) -> dict[str, float]:
  """Matmul FLOPs of `fn(*args)` per operand and result dtype, e.g. "bfloat16 x bfloat16 ->
  float32", largest first: which precision the step's matmuls run in (a float32 operand runs a
  GPU's or TPU's matmul units at a fraction of their bf16 rate)."""
  def dtypes(eqn, inside):
    del inside
    lhs, rhs = (v.aval.dtype for v in eqn.invars[:2])
    return (f"{lhs} x {rhs} -> {eqn.outvars[0].aval.dtype}",)

  _, per_key = _tally(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr, dtypes, frozenset(),
                      inside=False)
  return dict(sorted(per_key.items(), key=lambda item: -item[1]))


def model_flops_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose step does the model's FLOPs once: no remat recomputation, plain
  attention (the fused kernels hide their matmuls in custom calls), MAE's token gather as a
  gather (its one-hot matmul moves data, it is no model work). Same math as `config`."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, plain in (("remat", "none"), ("attention_impl", "plain"), ("token_gather", "take")):
    if key in config.model:
      config.model[key] = plain
  return config


def mfu(flops_per_step: float, step_seconds: float, peak_flops_per_sec: float | None
        ) -> float | None:
  """Achieved / peak FLOP/s, or None without a known peak."""
  if not peak_flops_per_sec or step_seconds <= 0:
    return None
  return flops_per_step / step_seconds / peak_flops_per_sec
