r"""DINO (Caron et al. 2021) configs.

    python -m ssl_jax.train --config configs/dino.py:smoke --workdir /tmp/dino_smoke
    python -m ssl_jax.train --config configs/dino.py:cifar10 --workdir /tmp/dino_c10
    python -m ssl_jax.train --config configs/dino.py:imagenet --workdir gs://.../dino_s16
    python -m ssl_jax.viz attention --workdir /tmp/dino_c10 --images DIR

Presets (comma-separated, later ones win): `smoke` (CPU, seconds), `digits` (the default, the
bundled digits, minutes on CPU), `cifar10` (../shared/data or any npz:PATH), `imagenet` (the
ViT-S/16 recipe: main_dino.py's defaults with the paper's batch 1024, 300 epochs and teacher
temperature 0.04 -> 0.07 over 30 epochs), and backbones `vit_s16`, `vit_s8`, `vit_b16`.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (configs/common.py, shared by every method's config)

import ml_collections  # noqa: E402

from ssl_jax import config_lib  # noqa: E402
from ssl_jax.methods import dino  # noqa: E402


def _crop_sizes(config, global_size: int, local_size: int) -> None:
  m = config.method
  m.global_view_1.size = m.global_view_2.size = global_size
  m.local_view.size = local_size


def get_config(arg: str = "digits"):
  config = config_lib.base_config()
  config.method = dino.default_method_config()
  config.model.name = "vit_s16"
  config.model.pool = "cls"            # DINO's features are the CLS token.
  config.model.pos_embed = "learn"     # Resampled bicubically for the local crops.
  config.model.drop_path_rate = 0.1    # Student only; the teacher has none.
  config.optim.name = "adamw"
  config.optim.lr = 5e-4               # At batch 256, scaled linearly (dino --lr).
  config.optim.warmup_epochs = 10
  config.optim.end_lr = 1e-6           # dino --min_lr.
  config.optim.b1, config.optim.b2 = 0.9, 0.999  # torch AdamW defaults.
  # utils.cosine_scheduler: warm-up np.linspace(start_warmup_value=0, lr, W), the peak at W - 1.
  config.optim.warmup_start_lr, config.optim.warmup_linspace = 0.0, True
  # Weight decay cosine 0.04 -> 0.4 over the run (--weight_decay, --weight_decay_end), on every
  # tensor of rank > 1 (get_params_groups: position embedding and CLS token included).
  config.optim.weight_decay = 0.04
  config.optim.weight_decay_schedule, config.optim.weight_decay_end = "cosine", 0.4
  config.optim.no_decay_names = ()
  config.optim.grad_clip_norm = 0.0
  config.optim.clip_per_tensor = 3.0   # --clip_grad, per parameter tensor.
  # --freeze_last_layer: the head's last layer gets no gradient for the first epoch.
  config.optim.groups.last_layer = ml_collections.ConfigDict(
      dict(pattern="(.*/)?last_layer/.*", freeze_epochs=1.0))

  presets = common.parse_presets(arg, known=("smoke", "digits", "cifar10", "imagenet",
                                             "vit_s16", "vit_s8", "vit_b16", "cpu"))
  for preset in presets:
    m = config.method
    if preset in ("smoke", "digits"):
      if preset == "smoke":
        common.smoke_data(config)
        common.tiny_vit(config)
        m.local_crops_number = 2
        m.out_dim, m.hidden_dim, m.bottleneck_dim = 256, 128, 64
        # 60 steps from a random ViT, whose CLS features are nearly the same for every image:
        # the teacher must move within the run (0.996 keeps it at its near-constant init) but
        # not follow the student step for step (0.9 collapses, as the paper's "previous
        # iterate" teacher), and the lr must stay low while the centre (momentum 0.9) catches
        # up with the teacher's common component, or every image is pushed to one prototype.
        m.momentum_teacher = 0.99
        config.optim.groups.last_layer.freeze_epochs = 0.0
        config.optim.lr = 2e-3
        config.optim.warmup_epochs = 0
        config.optim.warmup_steps = 30
      else:
        common.digits_data(config)
        common.small_vit(config)
        m.local_crops_number = 4
        m.out_dim, m.hidden_dim, m.bottleneck_dim = 1024, 512, 128
        m.momentum_teacher = 0.99
        config.optim.lr = 2e-3
        config.optim.warmup_epochs = 0
        config.optim.warmup_steps = 100
      config.model.drop_path_rate = 0.0
      _crop_sizes(config, config.data.image_size, config.data.image_size // 2)
    elif preset == "cifar10":
      common.cifar10_data(config)
      common.small_vit(config)
      config.model.drop_path_rate = 0.1
      _crop_sizes(config, 32, 16)
      m.local_crops_number = 6
      m.out_dim, m.hidden_dim, m.bottleneck_dim = 4096, 1024, 256
      m.teacher_temp, m.warmup_teacher_temp_epochs = 0.07, 30
      config.optim.lr = 5e-4
    elif preset == "imagenet":
      common.imagenet_data(config)
      if config.model.name == "vit_ti4":
        config.model.name = "vit_s16"
      common.full_size_vit(config)
      config.model.dtype = "bfloat16"
      config.model.drop_path_rate = 0.1
      config.batch_size = 1024
      config.epochs = 300
      _crop_sizes(config, 224, 96)
      m.local_crops_number = 8
      m.out_dim, m.hidden_dim, m.bottleneck_dim = 65536, 2048, 256
      # main_dino.py's help: "typically False with vit_small" (more accurate, less stable).
      m.norm_last_layer = False
      m.momentum_teacher = 0.996
      m.warmup_teacher_temp, m.teacher_temp, m.warmup_teacher_temp_epochs = 0.04, 0.07, 30
      config.optim.groups.last_layer.freeze_epochs = 1.0
      config.optim.lr = 5e-4
      config.optim.warmup_epochs = 10
      config.optim.end_lr = 1e-6
    elif preset in ("vit_s16", "vit_s8", "vit_b16"):
      config.model.name = preset
      common.full_size_vit(config)
    elif preset == "cpu":
      common.cpu_budget(config)
      config.optim.weight_decay = 0.04   # -> optim.weight_decay_end, DINO's cosine.
      m.local_crops_number = 4
      m.out_dim, m.hidden_dim, m.bottleneck_dim = 1024, 512, 128
      # dino --use_bn_in_head: a random ViT's CLS features are nearly the same for every image,
      # so without BN the centred teacher goes uniform within ~100 steps (loss -> log 1024,
      # k-NN at random init's level after 200 steps); BN spreads them from the first step.
      m.use_bn_in_head = True
      # 200 steps: a teacher that moves within the run (0.996 barely leaves its random init),
      # the sharp teacher temperature from the start, the last layer trained from step 0.
      m.momentum_teacher = 0.99
      m.warmup_teacher_temp = m.teacher_temp = 0.04
      m.warmup_teacher_temp_epochs = 0
      config.optim.groups.last_layer.freeze_epochs = 0.0
      for view in (m.global_view_1, m.global_view_2, m.local_view):
        view.blur_prob = 0.0             # No blur at 32 px (SimCLR B.9, solo-learn CIFAR).
  return config
