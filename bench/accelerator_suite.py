r"""Every figure of issue 13's table on one accelerator host, as JSON lines, in a time budget.

    python bench/accelerator_suite.py                  # the full suite (one GPU/TPU, <= 8 min)
    python bench/accelerator_suite.py --smoke          # every stage at toy size (CPU, CI)
    python bench/accelerator_suite.py --stages step,levers --budget_s 300
    python bench/accelerator_suite.py --skip pmae,loop
    python bench/accelerator_suite.py --stages levers --levers attention_cudnn,remat_dots
    python bench/accelerator_suite.py --stages loop --previous first_call.jsonl

Stages, in the order they run (the most wanted figures first, so a spent budget costs the least):
  requirements  the package's dependencies that are not installed, listed before anything runs;
  loader        host loader images/s (bench/input_pipeline.py, CIFAR-10 npz or digits);
  step          device-only train step: images/s, compile seconds, mfu_model, mfu_hardware
                (bench/train_step.py) of SimCLR cifar10 (ResNet-18, batch 256), MAE ViT-B/16
                224 (batch 256) and DINO imagenet (ViT-S/16, 2x224 + 10x96 crops, batch 128);
  visible_only  MAE encoder on the visible 25% vs on every patch (same MAE run as `step`);
  loop          the same configs through `python -m ssl_jax.train` (in-memory data): loop
                images/s and loop_to_step_ratio = loop / step;
  pmae          Perceptual MAE / MAE step-time ratio, DCGAN and MSG discriminators, ViT-B/16
                224, batch 64 (bench/pmae_vs_mae.py);
  profile       where the MAE ViT-B/16 step's device time goes: ms per step by op category
                (matmul, attention, elementwise, ...) and the costliest ops with the JAX op
                each came from (bench/profile_step.py); `--profile_lever L` profiles it with
                lever L on, `--profile_target pmae_dcgan|pmae_msg` profiles Perceptual MAE's
                step instead (the pmae stage's preset and batch);
  large         MAE ViT-L/16 224 step (batch 128): mfu_model and compile seconds (target 0.5);
  levers        MAE ViT-B/16 step with each speed lever of docs/performance.md (fused attention,
                remat, scanned blocks, one-hot token gather, XLA's GPU gemm/autotune/command
                buffer flags): step time, mfu_model, compile seconds.

Every measurement runs in its own Python process with a timeout (a crash, an out-of-memory or a
hang costs one figure, not the suite); its JSON lines are re-emitted with `suite`, `stage` and
`job` added, then one `summary` line holds the table. A job whose process lacks a module reports
`skipped: needs module X` instead of a traceback; the child's stderr goes to --log_dir.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("SSL_JAX_DATA", REPO.parent / "shared" / "data"))
STAGES = ("requirements", "loader", "step", "visible_only", "loop", "pmae", "profile", "large",
          "levers")

# Distribution name -> import name, where they differ.
_IMPORT_NAMES = {"jaxlib": "jaxlib", "orbax-checkpoint": "orbax.checkpoint",
                 "ml-collections": "ml_collections", "tensorflow-datasets": "tensorflow_datasets",
                 "tensorflow-cpu": "tensorflow", "dm-pix": "dm_pix", "pillow": "PIL",
                 "scikit-learn": "sklearn", "pytest-xdist": "xdist"}


@dataclasses.dataclass(frozen=True)
class Workload:
  """One method config measured by the step and loop stages."""
  name: str
  config: str            # configs/<m>.py:<presets>
  batch_size: int
  loop_overrides: tuple[str, ...] = ()  # The loop's in-memory source for this canvas.
  overrides: tuple[str, ...] = ()       # Both stages: e.g. bf16 for a float32 preset.


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Full (accelerator) or smoke (CPU) sizes of every stage."""
  workloads: tuple[Workload, ...]
  steps: int                   # timed steps per step measurement
  loop_steps: int              # steps of a loop run; windows of loop_log_every
  loop_log_every: int
  pmae_preset: str
  pmae_batch_size: int
  lever_config: str
  lever_batch_size: int
  large_config: str            # the `large` stage: issue 13's ViT-L MFU target
  large_batch_size: int
  loader_source: str
  loader_image_size: int
  loader_batch_size: int
  loader_extra: tuple[str, ...]  # more bench/input_pipeline.py flags
  job_timeout_s: float


def _cifar10_or_digits() -> str:
  npz = SHARED_DATA / "cifar10_train.npz"
  return f"npz:{SHARED_DATA}/cifar10_{{split}}.npz" if npz.exists() else "digits"


def full_sizes() -> Sizes:
  cifar = _cifar10_or_digits()
  # ImageNet presets read TFDS; the loop stage feeds them the in-memory digits at their canvas,
  # so it measures the loop, not a disk.
  imagenet_loop = ("data.source=digits", "data.eval_source=digits",
                   "data.eval_test_split=test", "data.worker_count=0")
  return Sizes(
      workloads=(
          # The cifar10 presets compute in float32 (they also run on CPU); issue 13's table
          # and bench/cifar10_accelerator.sh run them in bfloat16.
          Workload("simclr_cifar10", "configs/simclr.py:cifar10", 256,
                   (f"data.source={cifar}",), ("model.dtype=bfloat16",)),
          Workload("mae_vit_b16", "configs/mae.py:vit_b16,imagenet", 256, imagenet_loop),
          Workload("dino_vit_s16", "configs/dino.py:imagenet", 128, imagenet_loop),
      ),
      steps=10, loop_steps=150, loop_log_every=50,
      pmae_preset="vit_b16,imagenet", pmae_batch_size=64,
      lever_config="configs/mae.py:vit_b16,imagenet", lever_batch_size=256,
      large_config="configs/mae.py:vit_l16,imagenet", large_batch_size=128,
      loader_source=cifar, loader_image_size=32, loader_batch_size=256, loader_extra=(),
      job_timeout_s=240)


def smoke_sizes() -> Sizes:
  return Sizes(
      workloads=(
          Workload("simclr_smoke", "configs/simclr.py:smoke", 8),
          Workload("mae_smoke", "configs/mae.py:smoke", 8),
      ),
      steps=1, loop_steps=4, loop_log_every=2,
      pmae_preset="smoke", pmae_batch_size=4,
      lever_config="configs/mae.py:smoke", lever_batch_size=8,
      large_config="configs/mae.py:smoke", large_batch_size=16,
      loader_source="digits", loader_image_size=32, loader_batch_size=64,
      loader_extra=("--batches", "3", "--warmup", "1"), job_timeout_s=300)


@dataclasses.dataclass(frozen=True)
class Lever:
  """One speed lever: config overrides, XLA flags added to the job's XLA_FLAGS, and/or a batch
  size per step other than the stage's (0: the stage's)."""
  overrides: tuple[str, ...] = ()
  xla_flags: tuple[str, ...] = ()
  batch_size: int = 0


# Each lever of docs/performance.md (the baseline is the `step` stage's MAE job). The XLA-flag
# levers are for GPUs (other backends ignore --xla_gpu_* flags): Triton's gemm fusions off
# (cuBLAS alone), autotuning off (compile time), CUDA-graph command buffers off.
LEVERS = {
    # The plain MAE step, measured in the same call as the levers it is compared with.
    "baseline": Lever(),
    "attention_xla": Lever(("model.attention_impl=xla",)),
    "attention_cudnn": Lever(("model.attention_impl=cudnn",)),
    # TPU only (elsewhere the config falls back to 'xla'): Pallas splash attention.
    "attention_splash": Lever(("model.attention_impl=splash",)),
    "remat_dots": Lever(("model.remat=dots_saveable",)),
    "scan_blocks": Lever(("model.scan_blocks=True",)),
    "scan_cudnn": Lever(("model.scan_blocks=True", "model.attention_impl=cudnn")),
    "token_onehot": Lever(("model.token_gather=onehot",)),
    "cudnn_onehot": Lever(("model.attention_impl=cudnn", "model.token_gather=onehot")),
    "cublas_gemm": Lever(xla_flags=("--xla_gpu_enable_triton_gemm=false",)),
    "autotune_0": Lever(xla_flags=("--xla_gpu_autotune_level=0",)),
    "no_command_buffer": Lever(xla_flags=("--xla_gpu_enable_command_buffer=",)),
    # Batch per device: 4x the stage's 256 gives every matmul 4x the rows (ViT-B/16 MAE keeps
    # 49 tokens an image, so 256 images are only 12.5k rows).
    "batch_1024": Lever(batch_size=1024),
    "cudnn_onehot_1024": Lever(("model.attention_impl=cudnn", "model.token_gather=onehot"),
                               batch_size=1024),
}


# What the profile stage can profile: (config, batch size) from the suite's sizes.
PROFILE_TARGETS = {
    "mae": lambda sizes: (sizes.lever_config, sizes.lever_batch_size),
    "pmae_dcgan": lambda sizes: (f"configs/perceptual_mae.py:{sizes.pmae_preset},dcgan",
                                 sizes.pmae_batch_size),
    "pmae_msg": lambda sizes: (f"configs/perceptual_mae.py:{sizes.pmae_preset},msg",
                               sizes.pmae_batch_size),
}


def with_xla_flags(*flags: str) -> dict[str, str] | None:
  """The job environment that appends `flags` to this process's XLA_FLAGS (None: no change)."""
  if not flags:
    return None
  return {"XLA_FLAGS": " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()}


# --smoke measures one lever, only to keep the stage working: tests/test_vit_levers.py checks
# every lever's numerics (cuDNN attention needs a GPU).
CPU_LEVERS = ("scan_blocks",)


def emit(record: dict) -> None:
  print(json.dumps(record, sort_keys=True), flush=True)


def _distribution_name(requirement: str) -> str:
  return re.split(r"[=<>!~\[ ;]", requirement.strip(), maxsplit=1)[0]


def _importable(name: str) -> bool:
  module = _IMPORT_NAMES.get(name, name.replace("-", "_"))
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # A dotted name whose parent is absent.
    return False


def missing_requirements() -> dict:
  """The package's dependencies (pyproject.toml) whose module is not importable: `missing`
  (the runtime's `dependencies`), `missing_optional` (the `tf` and `test` extras: TFDS sources
  and pytest, which no stage needs), and the `installed` versions."""
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  extras = project.get("optional-dependencies", {})
  groups = {"missing": project["dependencies"],
            "missing_optional": extras.get("tf", []) + extras.get("test", [])}
  report, installed = {}, {}
  for group, requirements in groups.items():
    names = [_distribution_name(r) for r in requirements]
    report[group] = [name for name in names if not _importable(name)]
    for name in names:
      if name not in report[group]:
        try:
          installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
          installed[name] = "?"
  return {**report, "installed": installed}


class Runner:
  """Runs jobs as child processes within the suite's time budget and re-emits their lines."""

  def __init__(self, budget_s: float, log_dir: pathlib.Path):
    self.deadline = time.monotonic() + budget_s if budget_s > 0 else float("inf")
    self.log_dir = log_dir

  def run(self, stage: str, job: str, argv: list[str], timeout_s: float,
          env: dict[str, str] | None = None) -> list[dict]:
    """The JSON records the job printed (tagged), or [] after a skip/error line. `env`: extra
    environment variables of the job."""
    base = {"suite": "accelerator", "stage": stage, "job": job}
    left = self.deadline - time.monotonic()
    if left < 20:
      emit({**base, "skipped": "suite budget spent (--budget_s)"})
      return []
    timeout = min(timeout_s, left)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    start = time.monotonic()
    try:
      done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
      stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
      stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (
          expired.stdout or "")
      stderr = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (
          expired.stderr or "")
      code = None
    seconds = time.monotonic() - start
    (self.log_dir / f"{stage}.{job}.log").write_text(stderr)
    records = []
    for line in stdout.splitlines():
      if line.startswith("{"):
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        # job_wall_s: the whole child process (start-up, FLOP count, compile, steps), what a
        # device lease's budget is planned with.
        records.append({**record, **base, "job_wall_s": seconds})
        emit(records[-1])
    if code is None:
      emit({**base, "error": f"timed out after {timeout:.0f} s", "wall_s": seconds})
    elif code != 0:
      missing = re.findall(r"No module named '([\w.]+)'", stderr)
      if missing:
        emit({**base, "skipped": f"needs module {missing[-1]} (not installed)"})
      else:
        last = [l for l in stderr.strip().splitlines() if l.strip()][-1:] or [f"exit {code}"]
        emit({**base, "error": last[0][:300], "log": str(self.log_dir / f"{stage}.{job}.log")})
    return records


def _bench_train_step(workload_config: str, batch_size: int, steps: int,
                      overrides=(), compare_encode_all=False) -> list[str]:
  argv = ["bench/train_step.py", "--config", workload_config, "--batch_size", str(batch_size),
          "--steps", str(steps)]
  return argv + (["--compare_encode_all"] if compare_encode_all else []) + list(overrides)


def loop_overrides(workload: Workload, sizes: Sizes) -> list[str]:
  """The loop stage's config overrides: `sizes.loop_steps` steps (epochs off: the presets set
  their length in epochs, and the loop refuses both), no evaluation, export or pictures."""
  return [f"batch_size={workload.batch_size}", f"total_steps={sizes.loop_steps}", "epochs=0",
          f"log_every={sizes.loop_log_every}", "eval_every=0", "eval.protocols=",
          f"checkpoint_every={sizes.loop_steps}", "export_at_end=False", "visualize=False",
          *workload.overrides, *workload.loop_overrides]


def _loop_images_per_sec(workdir: pathlib.Path) -> float | None:
  """Median train/images_per_sec of the loop's log windows after the first (the compile)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return None
  rates = [json.loads(line).get("train/images_per_sec") for line in path.read_text().splitlines()
           if line.strip()]
  rates = [r for r in rates if r is not None][1:]
  return statistics.median(rates) if rates else None


def step_rates_of(records: list[dict]) -> dict[str, float]:
  """Device-only images/s per workload from an earlier suite run's lines (`--previous`), so a
  loop stage run in a later call (a device session too short for the whole suite) still gets
  its loop_to_step_ratio. Compare only runs on the same card."""
  return {r["job"]: r["images_per_sec"] for r in records
          if r.get("stage") == "step" and r.get("bench") == "train_step"
          and r.get("variant") == "default"}


def run_suite(stages: list[str], sizes: Sizes, runner: Runner, smoke: bool,
              levers: tuple[str, ...] | None = None,
              previous_step_rates: dict[str, float] | None = None,
              profile_lever: str = "", profile_target: str = "mae") -> dict:
  """Runs the stages in STAGES order; returns the summary figures. `levers` picks the levers
  stage's jobs (default: every lever of LEVERS, or CPU_LEVERS under --smoke); `profile_lever`
  names the lever the profile stage runs with (default: none, the plain step), `profile_target`
  the step it profiles (PROFILE_TARGETS)."""
  summary: dict = {}
  step_rates: dict[str, float] = dict(previous_step_rates or {})
  if "requirements" in stages:
    report = missing_requirements()
    emit({"suite": "accelerator", "stage": "requirements", **report})
    if report["missing"]:
      print(f"accelerator_suite: not installed: {', '.join(report['missing'])}; stages that "
            "need them report 'skipped' (docs/performance.md: carry wheels).", file=sys.stderr)
    summary["missing_requirements"] = report["missing"]

  if "loader" in stages:
    for record in runner.run("loader", "input_pipeline", [
        "bench/input_pipeline.py", "--source", sizes.loader_source, "--image_size",
        str(sizes.loader_image_size), "--batch_size", str(sizes.loader_batch_size),
        *sizes.loader_extra], sizes.job_timeout_s):
      if "loader_images_per_sec" in record:
        summary["loader_images_per_sec"] = record["loader_images_per_sec"]

  if "step" in stages or "visible_only" in stages:
    workloads = sizes.workloads if "step" in stages else [
        w for w in sizes.workloads if "mae" in w.name]
    for workload in workloads:
      compare = "visible_only" in stages and "mae" in workload.name
      for record in runner.run("step", workload.name, _bench_train_step(
          workload.config, workload.batch_size, sizes.steps, workload.overrides,
          compare_encode_all=compare),
          sizes.job_timeout_s * (2 if compare else 1)):
        if record.get("bench") == "train_step" and record.get("variant") == "default":
          step_rates[workload.name] = record["images_per_sec"]
          summary[f"{workload.name}/step_images_per_sec"] = record["images_per_sec"]
          summary[f"{workload.name}/mfu_model"] = record["mfu_model"]
          summary[f"{workload.name}/compile_s"] = record["compile_s"]
        if record.get("bench") == "mae_visible_only_speedup":
          summary["mae_visible_only_speedup"] = record["speedup"]

  if "loop" in stages:
    for workload in sizes.workloads:
      with tempfile.TemporaryDirectory(prefix=f"suite_loop_{workload.name}_") as workdir:
        runner.run("loop", workload.name, [
            "-m", "ssl_jax.train", "--config", workload.config, "--workdir", workdir,
            *[f"--config.{o}" for o in loop_overrides(workload, sizes)]], sizes.job_timeout_s)
        rate = _loop_images_per_sec(pathlib.Path(workdir))
      step = step_rates.get(workload.name)
      record = {"suite": "accelerator", "stage": "loop", "job": workload.name,
                "bench": "loop", "config": workload.config, "batch_size": workload.batch_size,
                "loop_images_per_sec": rate, "step_images_per_sec": step,
                "loop_to_step_ratio": rate / step if rate and step else None}
      emit(record)
      summary[f"{workload.name}/loop_to_step_ratio"] = record["loop_to_step_ratio"]

  if "pmae" in stages:
    for record in runner.run("pmae", "pmae_vs_mae", [
        "bench/pmae_vs_mae.py", "--preset", sizes.pmae_preset, "--batch_size",
        str(sizes.pmae_batch_size), "--steps", str(sizes.steps)], sizes.job_timeout_s * 2):
      if record.get("bench") == "pmae_vs_mae_ratio":
        summary[f"pmae_{record['discriminator']}_ratio"] = record["step_time_ratio"]

  if "profile" in stages:
    # Kernels replayed from CUDA graphs can reach the trace without their op: profile without.
    lever = LEVERS[profile_lever] if profile_lever else Lever()
    flags = lever.xla_flags + (() if smoke else ("--xla_gpu_enable_command_buffer=",))
    config, batch_size = PROFILE_TARGETS[profile_target](sizes)
    job = "_".join([profile_target, "step", *([profile_lever] if profile_lever else [])])
    for record in runner.run("profile", job, [
        "bench/profile_step.py", "--config", config, "--batch_size",
        str(lever.batch_size or batch_size), "--steps", str(sizes.steps), "--top", "40",
        *lever.overrides], sizes.job_timeout_s, env=with_xla_flags(*flags)):
      if record.get("bench") == "profile_category":
        summary[f"profile_{record['category']}_share"] = record["share"]
      if record.get("bench") == "profile_summary":
        summary["profile_wall_ms_per_step"] = record["wall_ms_per_step"]
        summary["profile_op_ms_per_step"] = record["op_ms_per_step"]

  if "large" in stages:
    for record in runner.run("large", "mae_large", _bench_train_step(
        sizes.large_config, sizes.large_batch_size, sizes.steps), sizes.job_timeout_s):
      if record.get("bench") == "train_step":
        summary["mae_large/mfu_model"] = record["mfu_model"]
        summary["mae_large/step_images_per_sec"] = record["images_per_sec"]
        summary["mae_large/compile_s"] = record["compile_s"]

  if "levers" in stages:
    if levers is None:
      levers = CPU_LEVERS if smoke else tuple(LEVERS)
    for lever in levers:
      batch_size = LEVERS[lever].batch_size or sizes.lever_batch_size
      for record in runner.run("levers", lever, _bench_train_step(
          sizes.lever_config, batch_size, sizes.steps, LEVERS[lever].overrides),
          sizes.job_timeout_s, env=with_xla_flags(*LEVERS[lever].xla_flags)):
        if record.get("bench") == "train_step":
          summary[f"lever_{lever}/step_time_s"] = record["step_time_s"]
          summary[f"lever_{lever}/mfu_model"] = record["mfu_model"]
          summary[f"lever_{lever}/compile_s"] = record["compile_s"]
  return summary


def _stage_list(text: str) -> list[str]:
  names = [s.strip() for s in text.split(",") if s.strip()]
  unknown = [s for s in names if s not in STAGES]
  if unknown:
    raise SystemExit(f"accelerator_suite: unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
  return names


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true", help="toy sizes, CPU friendly")
  parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, of STAGES")
  parser.add_argument("--skip", default="", help="comma-separated stages not to run")
  parser.add_argument("--levers", default="",
                      help=f"comma-separated levers to measure (default all): {', '.join(LEVERS)}")
  parser.add_argument("--profile_target", default="mae", choices=sorted(PROFILE_TARGETS),
                      help="the step the profile stage profiles (default: MAE ViT-B/16)")
  parser.add_argument("--profile_lever", default="",
                      help="the lever the profile stage runs with (default: the plain step)")
  parser.add_argument("--previous", default="",
                      help="an earlier run's JSON lines: its step figures for the loop ratios")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="wall-clock budget of the whole suite (default 450; smoke: none)")
  parser.add_argument("--log_dir", default="", help="children's stderr (default: a temp dir)")
  args = parser.parse_args(argv)
  stages = [s for s in _stage_list(args.stages) if s not in _stage_list(args.skip)]
  levers = tuple(l.strip() for l in args.levers.split(",") if l.strip()) or None
  unknown = [l for l in (*(levers or ()), *([args.profile_lever] if args.profile_lever else []))
             if l not in LEVERS]
  if unknown:
    raise SystemExit(f"accelerator_suite: unknown lever(s) {unknown}; levers: {', '.join(LEVERS)}")
  sizes = smoke_sizes() if args.smoke else full_sizes()
  budget = args.budget_s if args.budget_s is not None else (0 if args.smoke else 450)
  log_dir = pathlib.Path(args.log_dir or tempfile.mkdtemp(prefix="accelerator_suite_"))
  log_dir.mkdir(parents=True, exist_ok=True)
  start = time.monotonic()
  previous = {}
  if args.previous:
    lines = pathlib.Path(args.previous).read_text().splitlines()
    previous = step_rates_of([json.loads(l) for l in lines if l.startswith("{")])
  summary = run_suite(stages, sizes, Runner(budget, log_dir), args.smoke, levers, previous,
                      args.profile_lever, args.profile_target)
  emit({"suite": "accelerator", "stage": "summary", "smoke": args.smoke, "stages": stages,
        "wall_s": time.monotonic() - start, "log_dir": str(log_dir), **summary})


if __name__ == "__main__":
  main()
