"""Context Encoders (Pathak, Krähenbühl, Donahue, Darrell & Efros, CVPR 2016) as a pretext task.

A square hole is cut from each view (`method.region`: "center", the paper's central block, or
"random", one block at a uniformly random position per image; side `region_fraction` of the
image side, the paper's 64 of 128 = 0.5) and filled with zeros, i.e. the dataset mean after
normalisation (the paper fills with the mean pixel). A ViT encoder reads the holed image, a
light decoder (`method.decoder_*` ViT blocks on the encoder's patch tokens, then a linear map to
each token's p*p*3 pixels) paints the whole image, and the loss is the squared error over the
hole only (Eq. 1, `losses.reconstruction.masked_pixel_mse`); the paper's 10x weight on a 7-pixel
overlap band is not used.

`adversarial_weight` > 0 adds the paper's joint loss (Eq. 3), (1 - w) * L_rec + w * L_adv with
w = 0.001 in the paper: a DCGAN-style discriminator (`models.discriminators.DCGANDiscriminator`,
from Perceptual MAE) judges the inpainted composite (context + filled hole, in [0, 1] pixels)
against the real image, with the non-saturating GAN losses of `losses.perceptual`. Params are
then {'encoder', 'decoder', 'discriminator'}; the loss's value is the generator's objective and
stop-gradients give the discriminator exactly the gradient of its own objective (as Perceptual
MAE does), so one optimizer steps both (the paper gives D a 10x smaller lr than the generator).

`features` are the encoder's pooled features of the whole, unholed image.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssl_jax.config_lib import ConfigError
from ssl_jax.data import augment
from ssl_jax.losses import perceptual, reconstruction
from ssl_jax.methods import patch_grid
from ssl_jax.models import discriminators, registry, vit

REGIONS = ("center", "random")


class InpaintingDecoder(nn.Module):
  """ViT blocks on the encoder's tokens (CLS included), then each patch token -> p*p*3 pixels."""
  patch_size: int
  hidden_size: int = 128
  depth: int = 2
  num_heads: int = 4

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Dense(self.hidden_size, name="embed")(tokens.astype(jnp.float32))
    for i in range(self.depth):
      x = vit.Block(hidden_size=self.hidden_size, num_heads=self.num_heads,
                    name=f"blocks_{i}")(x, train=train)
    x = nn.LayerNorm(epsilon=1e-6, name="norm")(x)
    return nn.Dense(self.patch_size**2 * 3, name="pred")(x[:, 1:])


class ContextEncoder(nn.Module):
  """Encoder (ViT) + InpaintingDecoder. Params: {'encoder', 'decoder'}."""
  encoder: nn.Module
  decoder: InpaintingDecoder

  def __call__(self, holed_images: jax.Array, *, train: bool) -> jax.Array:
    """[B, H, W, 3] -> [B, H, W, 3] the painted image (same normalisation as the input)."""
    tokens = self.encoder(holed_images, train=train)["tokens"]
    patches = self.decoder(tokens, train=train)
    p = self.decoder.patch_size
    grid = (holed_images.shape[1] // p, holed_images.shape[2] // p)
    return vit.unpatchify(patches, p, 3, grid)

  def encode(self, images, *, train: bool = False):
    return self.encoder(images, train=train)


def default_method_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "inpainting"
  m.region = "center"             # center | random (one block per image, uniform position).
  m.region_fraction = 0.5         # Hole side / image side (paper: 64 of 128).
  m.decoder_dim = 128
  m.decoder_depth = 2
  m.decoder_heads = 4
  m.adversarial_weight = 0.0      # Paper's joint loss: 0.001 (reconstruction gets 0.999).
  d = ml_collections.ConfigDict()  # DCGANDiscriminator layers, sized for 32x32 inputs.
  d.widths = (64, 128, 256)
  d.kernel_sizes = (4, 4, 4)
  d.paddings = (1, 1, 1)
  d.head_kernel_size = 4
  d.norm = "batch"                # batch (the paper's DCGAN BatchNorm) | layer
  m.discriminator = d
  m.view = augment.view_config(crop_scale=(0.2, 1.0))
  return m


def hole_mask(rng: jax.Array, batch: int, size: int, *, region: str,
              fraction: float) -> jax.Array:
  """[B, size, size, 1] float mask, 1 inside each image's square hole of side round(f * size)."""
  if region not in REGIONS:
    raise ConfigError(f"method.region must be one of {REGIONS}; got {region!r}.")
  side = int(round(fraction * size))
  if not 0 < side < size:
    raise ConfigError(f"method.region_fraction={fraction} gives a hole of {side} pixels in a "
                      f"{size}-pixel image; choose a fraction in (0, 1).")
  if region == "center":
    corners = jnp.full((batch, 2), (size - side) // 2)
  else:
    corners = jax.random.randint(rng, (batch, 2), 0, size - side + 1)
  rows = jnp.arange(size)
  inside_y = (rows[None] >= corners[:, :1]) & (rows[None] < corners[:, :1] + side)  # [B, size]
  inside_x = (rows[None] >= corners[:, 1:]) & (rows[None] < corners[:, 1:] + side)
  return (inside_y[:, :, None] & inside_x[:, None, :]).astype(jnp.float32)[..., None]


@dataclasses.dataclass(frozen=True)
class Inpainting(patch_grid.PatchGridMethod):

  def __post_init__(self):
    m = self.config.method
    if not self.config.model.name.startswith("vit_"):
      raise ConfigError(f"inpainting needs a ViT backbone (model.name = vit_*); got "
                        f"{self.config.model.name!r}.")
    if not 0.0 <= m.adversarial_weight < 1.0:
      raise ConfigError(f"method.adversarial_weight must be in [0, 1) (paper: 0.001); got "
                        f"{m.adversarial_weight}.")
    hole_mask(jax.random.PRNGKey(0), 1, self.image_size, region=m.region,
              fraction=m.region_fraction)  # Fails early with a clear message.

  @property
  def adversarial(self) -> bool:
    return self.config.method.adversarial_weight > 0

  @property
  def model(self) -> ContextEncoder:
    m = self.config.method
    return ContextEncoder(
        encoder=registry.build_encoder(self.config.model),
        decoder=InpaintingDecoder(patch_size=self.patch_size, hidden_size=m.decoder_dim,
                                  depth=m.decoder_depth, num_heads=m.decoder_heads))

  @property
  def discriminator(self) -> discriminators.DCGANDiscriminator:
    d = self.config.method.discriminator
    return discriminators.DCGANDiscriminator(
        widths=tuple(d.widths), kernel_sizes=tuple(d.kernel_sizes), paddings=tuple(d.paddings),
        head_kernel_size=d.head_kernel_size, norm=d.norm)

  def init(self, rng, batch):
    del batch
    model_rng, disc_rng = jax.random.split(rng)
    images = jnp.zeros((2, self.image_size, self.image_size, 3), jnp.float32)
    params = dict(self.model.init({"params": model_rng, "dropout": model_rng}, images,
                                  train=False)["params"])
    if self.adversarial:
      params["discriminator"] = self.discriminator.init(disc_rng, images)["params"]
    return params, {}

  def _generator_params(self, params):
    return {k: v for k, v in params.items() if k != "discriminator"}

  def inpaint(self, params, images, rng, *, train: bool):
    """Normalised views -> (prediction, mask, composite = context + predicted hole)."""
    m = self.config.method
    mask_rng, drop_rng = jax.random.split(rng)
    mask = hole_mask(mask_rng, images.shape[0], images.shape[1], region=m.region,
                     fraction=m.region_fraction)
    pred = self.model.apply({"params": self._generator_params(params)}, images * (1.0 - mask),
                            train=train, rngs={"dropout": drop_rng})
    return pred, mask, images * (1.0 - mask) + pred * mask

  def _to_pixels(self, images):
    view = self.config.method.view
    return images * jnp.asarray(view.std, jnp.float32) + jnp.asarray(view.mean, jnp.float32)

  def loss(self, params, state, batch, rng, step):
    del step
    view_rng, model_rng = jax.random.split(rng)
    images = augment.make_views(view_rng, batch["image"], self.config.method.view)
    pred, mask, composite = self.inpaint(params, images, model_rng, train=True)
    rec = reconstruction.masked_pixel_mse(pred, images, mask)
    metrics = {"reconstruction": rec}
    if not self.adversarial:
      return rec, (metrics, state)
    w = self.config.method.adversarial_weight
    disc = self.discriminator
    fake, real = self._to_pixels(composite), self._to_pixels(images)
    # Generator term: gradients reach the generator only; discriminator term: the
    # discriminator only (the fake is a constant to it).
    fake_logits_g, _ = disc.apply({"params": jax.lax.stop_gradient(params["discriminator"])},
                                  fake)
    gen_adv = perceptual.nonsaturating_generator_loss(fake_logits_g)
    real_logits, _ = disc.apply({"params": params["discriminator"]}, real)
    fake_logits_d, _ = disc.apply({"params": params["discriminator"]},
                                  jax.lax.stop_gradient(fake))
    disc_loss = perceptual.nonsaturating_discriminator_loss(real_logits, fake_logits_d)
    generator = (1.0 - w) * rec + w * gen_adv
    real_acc, fake_acc = perceptual.discriminator_accuracy(real_logits, fake_logits_d)
    metrics.update(gen_adversarial=gen_adv, disc_loss=disc_loss, disc_real_acc=real_acc,
                   disc_fake_acc=fake_acc)
    # Value: the generator's objective (train/loss); gradient: both players' own objectives.
    return generator + disc_loss - jax.lax.stop_gradient(disc_loss), (metrics, state)

  def features(self, params, state, images):
    del state
    out = self.model.apply({"params": self._generator_params(params)}, self.eval_inputs(images),
                           train=False, method=ContextEncoder.encode)
    return out["pooled"].astype(jnp.float32)

  def visualize(self, params, state, images, rng):
    """One row per image: original | holed input | inpainted (context + predicted hole)."""
    del state
    inputs = self.eval_inputs(images)
    _, mask, composite = self.inpaint(params, inputs, rng, train=False)
    columns = [inputs, inputs * (1.0 - mask), composite]
    columns = [jnp.clip(self._to_pixels(c), 0.0, 1.0) for c in columns]
    rows = jnp.concatenate(columns, axis=2)
    return {"inpainting": jnp.concatenate(list(rows), axis=0)}
