"""bench/profile_step.py: compiled-HLO op categories and a real trace of a step read back."""

import jax
import pytest

from bench import profile_step
from ssl_jax import config_lib

# Shaped like XLA:GPU's scheduled HLO: a cuBLAS gemm, a Triton gemm fusion, cuDNN attention, a
# loop fusion, a reduce fusion, a transpose fusion, an all-reduce and a while loop.
GPU_HLO = """
%triton_gemm_computation (p0: bf16[64,32], p1: bf16[32,16]) -> bf16[64,16] {
  %p0 = bf16[64,32]{1,0} parameter(0)
  %p1 = bf16[32,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[64,16]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_gelu (p0: bf16[64,16]) -> bf16[64,16] {
  %p0 = bf16[64,16]{1,0} parameter(0)
  ROOT %tanh.1 = bf16[64,16]{1,0} tanh(%p0)
}

%fused_sum (p0: f32[64,16]) -> f32[64] {
  %p0 = f32[64,16]{1,0} parameter(0)
  %zero = f32[] constant(0)
  ROOT %reduce.1 = f32[64]{0} reduce(%p0, %zero), dimensions={1}, to_apply=%add
}

%fused_transpose (p0: bf16[64,16]) -> bf16[16,64] {
  %p0 = bf16[64,16]{1,0} parameter(0)
  ROOT %transpose.1 = bf16[16,64]{1,0} transpose(%p0), dimensions={1,0}
}

ENTRY %main (a: bf16[64,32], b: bf16[32,16]) -> bf16[64,16] {
  %a = bf16[64,32]{1,0} parameter(0)
  %b = bf16[32,16]{1,0} parameter(1)
  %custom-call.1 = (bf16[64,16]{1,0}, s8[1024]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", metadata={op_name="jit(train_step)/encoder/fc1/dot_general"}
  %gemm_fusion.2 = bf16[64,16]{1,0} fusion(%a, %b), kind=kCustom, calls=%triton_gemm_computation, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %custom-call.3 = (bf16[2,4,64,16]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$fmhaSoftmax"
  %loop_fusion.4 = bf16[64,16]{1,0} fusion(%gemm_fusion.2), kind=kLoop, calls=%fused_gelu
  %input_reduce_fusion.5 = f32[64]{0} fusion(%loop_fusion.4), kind=kInput, calls=%fused_sum
  %transpose_fusion.6 = bf16[16,64]{1,0} fusion(%loop_fusion.4), kind=kInput, calls=%fused_transpose
  %all-reduce.7 = f32[64]{0} all-reduce(%input_reduce_fusion.5), replica_groups={}, to_apply=%add
  %while.8 = (s32[], bf16[64,16]) while(%tuple), condition=%cond, body=%body
  ROOT %copy.9 = bf16[64,16]{1,0} copy(%loop_fusion.4)
}
"""


def test_ops_of_gpu_style_hlo_get_their_categories():
  instructions, computations = profile_step.parse_hlo(GPU_HLO)
  categories = {name: profile_step.categorize(line, computations)
                for name, line in instructions.items() if "." in name}
  assert categories == {
      "dot.1": "matmul", "tanh.1": "tanh", "reduce.1": "reduce", "transpose.1": "copy",
      "custom-call.1": "matmul", "gemm_fusion.2": "matmul", "custom-call.3": "attention",
      "loop_fusion.4": "elementwise", "input_reduce_fusion.5": "reduction",
      "transpose_fusion.6": "copy", "all-reduce.7": "collective", "while.8": "control",
      "copy.9": "copy"}


def test_a_traced_mae_step_is_read_back_op_by_op():
  config = config_lib.load_config("configs/mae.py:smoke")
  config.batch_size = 8
  # One device: the suite's 8 virtual CPU devices share 2 cores and mostly wait on each other.
  records = profile_step.profile(config, steps=2, top=5, devices=jax.devices()[:1])
  categories = {r["category"]: r for r in records if r["bench"] == "profile_category"}
  ops = [r for r in records if r["bench"] == "profile_op"]
  summary = records[-1]
  assert summary["bench"] == "profile_summary" and summary["ops"] > 50
  assert sum(r["ms_per_step"] for r in categories.values()) == pytest.approx(
      summary["op_ms_per_step"])
  assert sum(r["share"] for r in categories.values()) == pytest.approx(1.0)
  # Shares are timings (they move with the machine's load); what is checked is that the ops
  # were found in the compiled HLO and sorted into the categories a ViT step has.
  assert {"matmul", "elementwise", "reduction"} <= set(categories)
  assert categories.get("unknown", {"share": 0.0})["share"] < 0.2
  assert len(ops) == 5 and ops[0]["ms_per_step"] >= ops[-1]["ms_per_step"]
  assert all(r["category"] != "unknown" and r["shape"] for r in ops)
