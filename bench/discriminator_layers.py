r"""Per-layer cost of the single-scale (DCGAN) discriminator: forward, input and weight gradients.

    python bench/discriminator_layers.py --batch_size 8 --image_size 224

Perceptual MAE needs all three for every strided convolution of the discriminator: the
forward (real and reconstructed images), the input gradient (the generator's adversarial and
feature terms reach the reconstruction through it) and the weight gradient (the
discriminator's own update). This prints, per layer of `DCGANDiscriminator`'s defaults (the
authors' stack for 224x224), the time and the achieved FLOP/s of each, so a step-time ratio
above the FLOP ratio (bench/pmae_vs_mae.py) can be traced to the backend's convolution
kernels. One JSON line per layer and pass.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from ssl_jax.flops import count_flops  # noqa: E402
from ssl_jax.models import discriminators  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

  defaults = discriminators.DCGANDiscriminator()
  rng = np.random.default_rng(0)
  size, channels = args.image_size, 3
  for index, (width, kernel, pad) in enumerate(
      zip(defaults.widths, defaults.kernel_sizes, defaults.paddings)):
    inputs = jnp.asarray(rng.standard_normal((args.batch_size, size, size, channels), np.float32))
    weights = jnp.asarray(rng.standard_normal((kernel, kernel, channels, width), np.float32))

    def conv(w, x, pad=pad):
      return jax.lax.conv_general_dilated(
          x, w, (2, 2), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def summed(w, x, conv=conv):
      return conv(w, x).sum()

    passes = {"forward": summed,
              "input_gradient": jax.grad(summed, argnums=1),
              "weight_gradient": jax.grad(summed, argnums=0)}
    for name, fn in passes.items():
      compiled = jax.jit(fn).lower(weights, inputs).compile()
      seconds = common.time_fn(compiled, weights, inputs, repeats=args.repeats)
      flops = count_flops(fn, weights, inputs).all  # XLA's GPU count misses cuDNN convs.
      common.emit({"bench": "discriminator_layers", "layer": index,
                   "conv": f"{kernel}x{kernel} {channels}->{width} stride 2 at {size}",
                   "pass": name, "seconds": seconds, "gflops": flops / 1e9,
                   "gflops_per_sec": flops / seconds / 1e9, "batch_size": args.batch_size,
                   "device": jax.devices()[0].platform})
    size, channels = jax.eval_shape(conv, weights, inputs).shape[2:]


if __name__ == "__main__":
  main()
