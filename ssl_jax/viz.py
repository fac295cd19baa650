"""Pictures of what a method learned: image grids to TensorBoard and PNG files.

Each method returns named grids from `Method.visualize` (MAE: original | masked |
reconstruction | reconstruction + visible); this module only writes them out, under
`workdir/images/<name>_<step>.png` and as TensorBoard images.
"""

from __future__ import annotations

import argparse
import sys
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ssl_jax import errors, metrics_io


def to_uint8(image) -> np.ndarray:
  """[H, W, C] floats in [0, 1] -> uint8 (values outside are clipped)."""
  return (np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image, path: str | pathlib.Path, *, min_size: int = 256) -> pathlib.Path:
  """Writes an image, upscaled by an integer factor (nearest) so small grids stay readable."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  array = to_uint8(image)
  scale = max(1, min_size // max(1, min(array.shape[:2])))
  picture = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
  if scale > 1:
    picture = picture.resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
  picture.save(path)
  return path


def write_method_images(method, train_state, evaluator, writer, workdir, step: int,
                        count: int) -> dict[str, pathlib.Path]:
  """Renders `method.visualize` on the evaluator's fixed test images; TensorBoard + PNG."""
  images = evaluator.fixed_images(count)
  if len(images) == 0:
    return {}
  grids = jax.jit(method.visualize)(train_state["params"], train_state["method_state"],
                                    images, jax.random.PRNGKey(step))
  written = {}
  for name, grid in grids.items():
    grid = np.asarray(jax.device_get(grid))
    writer.write_images(step, {f"images/{name}": to_uint8(grid)[None]})
    written[name] = save_png(grid, pathlib.Path(workdir) / "images" / f"{name}_{step}.png")
  return written


# Command-line tools, `python -m ssl_jax.viz <command> ...`: name -> (add_arguments(parser),
# run(args)). Each tool registers itself here right after its run function.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None],
                             Callable[[argparse.Namespace], None]]] = {}


# ----------------------------------------------------------------------------------------------
# `compare`: reconstructions and last-layer attention of several runs (MAE vs Perceptual MAE).
# ----------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class VizError(errors.UserError, ValueError):
  """A picture cannot be drawn as asked (missing run or images, wrong backbone)."""


def load_image_folder(directory: str | pathlib.Path, count: int) -> list[Image.Image]:
  """The first `count` images under `directory` (subfolders included, sorted by path), RGB."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise VizError(f"--images {directory} is not a directory of image files.")
  files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES
                 and p.is_file())
  if not files:
    raise VizError(f"{directory} holds no {'/'.join(_IMAGE_SUFFIXES)} files (subfolders "
                   "included).")
  return [Image.open(path).convert("RGB") for path in files[:count]]


def _canvas(images: list[Image.Image], size: int) -> np.ndarray:
  """uint8 [N, size, size, 3]: what the data pipeline hands a run (its square canvas)."""
  return np.stack([np.asarray(image.resize((size, size), Image.BILINEAR), np.uint8)
                   for image in images])


def _attention_overlay(display: np.ndarray, attention: np.ndarray, grid: tuple[int, int],
                       patch_size: int) -> np.ndarray:
  """[B, H, W, 3] images with the head-averaged CLS attention [B, N] as a heat overlay."""
  from ssl_jax import attention as attention_lib
  low = attention.min(axis=-1, keepdims=True)
  high = attention.max(axis=-1, keepdims=True)
  scaled = (attention - low) / np.maximum(high - low, 1e-12)
  heat = np.asarray(attention_lib.heat_colours(
      attention_lib.upsample_patch_maps(jnp.asarray(scaled), grid, patch_size)))
  if heat.shape[1:3] != display.shape[1:3]:
    heat = np.asarray(jax.image.resize(heat, display.shape, method="nearest"))
  gray = display.mean(axis=-1, keepdims=True)
  return 0.35 * gray + 0.65 * heat


def render_run_columns(workdir: str | pathlib.Path, images: list[Image.Image], *, seed: int,
                       step: int | None = None) -> dict:
  """One run's pictures of `images`, each [B, S, S, 3] in [0, 1] at the run's view size.

  'masked' and 'reconstruction' (visible patches pasted back) are the run's
  `Method.visualize` grid (MAE's original | masked | reconstruction | reconstruction +
  visible); 'attention' is the head-averaged [CLS] attention of the encoder's last block on the
  whole image (attention.cls_attention), as the Perceptual MAE blog post shows it.
  Returns {'label', 'step', 'original', 'masked', 'reconstruction', 'attention'}.
  """
  from ssl_jax import attention as attention_lib
  from ssl_jax import runs
  from ssl_jax.methods import build_method

  config = runs.load_config(workdir)
  run = runs.load_checkpoint(workdir, step)
  params, step = run.params, run.step
  method = build_method(config)
  canvas = _canvas(images, int(config.data.image_size))
  # Reconstruction pictures read params only (MAE and Perceptual MAE keep no state they use).
  grids = jax.jit(method.visualize)(params, {}, canvas, jax.random.PRNGKey(seed))
  if "reconstruction" not in grids:
    raise VizError(f"method {config.method.name!r} of {workdir} renders no reconstruction "
                   "grid; compare takes MAE-family runs.")
  grid = np.asarray(grids["reconstruction"], np.float32)
  batch = len(images)
  size = grid.shape[0] // batch
  columns = grid.reshape(batch, size, 4, size, 3).transpose(2, 0, 1, 3, 4)
  encoder = runs.load_encoder(workdir, params=params)
  inputs = method.eval_inputs(jnp.asarray(canvas))
  head_mean = jnp.mean(jax.jit(attention_lib.cls_attention, static_argnums=0)(
      encoder.encoder, encoder.params, inputs), axis=1)
  patch_size = encoder.encoder.patch_size
  grid_hw = attention_lib.patch_grid(head_mean.shape[-1], inputs.shape[1:3], patch_size)
  attention = _attention_overlay(columns[0], np.asarray(head_mean), grid_hw, patch_size)
  label = "PMAE" if config.method.name == "perceptual_mae" else config.method.name.upper()
  return {"label": label, "step": int(step), "original": columns[0], "masked": columns[1],
          "reconstruction": columns[3], "attention": attention}


def compare_grid(runs: list[dict]) -> tuple[np.ndarray, list[str]]:
  """Rows = images; columns = input, then per run masked | reconstruction, then per run
  attention. All tiles are resized (nearest) to the first run's size. Returns the [H, W, 3]
  grid in [0, 1] and the column titles."""
  size = runs[0]["original"].shape[1]

  def fit(tiles):
    tiles = np.asarray(tiles, np.float32)
    if tiles.shape[1] != size:
      tiles = np.asarray(jax.image.resize(tiles, (tiles.shape[0], size, size, 3), "nearest"))
    return tiles

  columns, titles = [fit(runs[0]["original"])], ["input"]
  for run in runs:
    columns += [fit(run["masked"]), fit(run["reconstruction"])]
    titles += [f"{run['label']}\nmasked", f"{run['label']}\nreconstr."]
  for run in runs:
    columns.append(fit(run["attention"]))
    titles.append(f"{run['label']}\nattention")
  rows = np.concatenate(columns, axis=2)                         # [B, S, C*S, 3]
  return np.clip(rows.reshape(-1, rows.shape[2], 3), 0.0, 1.0), titles


def _titled(grid: np.ndarray, titles: list[str], *, tile_size: int) -> Image.Image:
  """The grid upscaled (nearest, integer factor) until a column is at least `tile_size`
  pixels wide, under a white strip with each column's (two-line) title."""
  from PIL import ImageDraw
  array = to_uint8(grid)
  column = array.shape[1] // len(titles)
  scale = max(1, -(-tile_size // column))
  picture = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale),
                                          Image.NEAREST)
  header = 26
  titled = Image.new("RGB", (picture.width, picture.height + header), "white")
  titled.paste(picture, (0, header))
  draw = ImageDraw.Draw(titled)
  column_width = picture.width / len(titles)
  for i, title in enumerate(titles):
    draw.text((int(i * column_width) + 2, 1), title, fill="black")
  return titled


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdirs", nargs="+", required=True,
                      help="run directories to compare, e.g. an MAE and a Perceptual MAE run")
  parser.add_argument("--images", required=True, help="directory of images (png/jpg)")
  parser.add_argument("--num_images", type=int, default=6)
  parser.add_argument("--output", default="",
                      help="PNG path (default: <first workdir>/images/compare_<step>.png)")
  parser.add_argument("--seed", type=int, default=0, help="masking seed, shared by all runs")
  parser.add_argument("--tile_size", type=int, default=96,
                      help="each picture is upscaled (nearest) to at least this many pixels")


def compare_main(args: argparse.Namespace) -> pathlib.Path:
  """Reconstructions and last-layer attention of MAE vs Perceptual MAE runs, side by side.

  For the same images and the same mask in every run: input | per run masked input and
  reconstruction | per run [CLS] attention of the last encoder block (the Perceptual MAE blog
  post's comparison). Writes a PNG and a TensorBoard image under the first workdir.
  """
  if len(args.workdirs) < 2:
    raise VizError("compare needs at least two --workdirs (e.g. MAE_W PMAE_W).")
  if args.num_images < 1:
    raise VizError(f"--num_images must be >= 1; got {args.num_images}.")
  images = load_image_folder(args.images, args.num_images)
  runs = [render_run_columns(w, images, seed=args.seed) for w in args.workdirs]
  grid, titles = compare_grid(runs)
  first = pathlib.Path(args.workdirs[0])
  step = runs[0]["step"]
  output = pathlib.Path(args.output) if args.output else first / "images" / f"compare_{step}.png"
  if output.suffix.lower() != ".png":
    raise VizError(f"--output {output} must name a .png file (e.g. {output / 'compare.png'}).")
  output.parent.mkdir(parents=True, exist_ok=True)
  _titled(grid, titles, tile_size=args.tile_size).save(output)
  writer = metrics_io.tensorboard_writer(first / "tensorboard")
  writer.write_images(step, {"compare/" + "_vs_".join(r["label"].replace(" ", "_")
                                                      for r in runs): to_uint8(grid)[None]})
  writer.close()
  print(f"wrote {output} ({' | '.join(t.replace(chr(10), ' ') for t in titles)})")
  return output


SUBCOMMANDS["compare"] = (add_compare_arguments, compare_main)


# ----------------------------------------------------------------------------------------------
# `attention`: per-head [CLS] self-attention of a run's ViT on a folder of images (DINO Fig. 1).
# ----------------------------------------------------------------------------------------------


def _view_normalisation(method_config) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) of the method's first view recipe (`view`, `global_view_1` ...)."""
  from ssl_jax.data import augment
  for value in method_config.values():
    if hasattr(value, "keys") and "mean" in value and "std" in value:
      return tuple(value["mean"]), tuple(value["std"])
  default = augment.view_config()
  return tuple(default.mean), tuple(default.std)


def add_attention_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="run directory (config.json + checkpoints/)")
  parser.add_argument("--images", required=True,
                      help="directory of images (jpg/png ..., or class subfolders of them)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--num_images", type=int, default=16)
  parser.add_argument("--image_size", type=int, default=0,
                      help="side the images are resized to (0: the run's evaluation size); any "
                           "multiple of the patch size works, as in dino's visualize_attention")
  parser.add_argument("--keep_mass", type=float, default=0.6,
                      help="fraction of each head's attention mass the masks keep")
  parser.add_argument("--output", default="", help="folder for the PNGs (default: W/attention)")


def attention_main(args: argparse.Namespace) -> list[pathlib.Path]:
  """Last-block [CLS] self-attention, per head and thresholded, of a run's ViT on your images.

  As dino's visualize_attention.py: one row per image, image | one heat map per head | each
  head's smallest patch set holding --keep_mass of its attention, tinted over the image. The
  encoder is the one the method shows (DINO: the teacher), else params['encoder']. Writes
  W/attention/attention_<step>.png (all images) and attention_<step>_<i>.png (one each).
  """
  from ssl_jax import attention as attention_lib
  from ssl_jax import runs
  from ssl_jax.data import augment, sources
  from ssl_jax.methods import build_method
  from ssl_jax.models import registry

  workdir = pathlib.Path(args.workdir)
  config = runs.load_config(workdir)
  if args.num_images < 1:
    raise VizError(f"--num_images must be >= 1; got {args.num_images}.")
  method = build_method(config)
  run = runs.load_checkpoint(workdir, args.step)
  params, step = run.params, run.step
  if hasattr(method, "attention_encoder"):
    # The method's attention lives in its state (DINO's teacher).
    encoder, encoder_params = method.attention_encoder(params, run.method_state)
  else:
    if "encoder" not in params:
      raise VizError(f"The params of {workdir} have no 'encoder' entry (top level: "
                     f"{sorted(params)}); attention maps need a ViT encoder.")
    encoder, encoder_params = registry.build_encoder(config.model), params["encoder"]

  size = args.image_size or method.eval_image_size
  patch_size = getattr(encoder, "patch_size", None)
  if patch_size is None:
    raise VizError(f"model.name={config.model.name!r} is not a ViT; attention maps need one.")
  if size % patch_size:
    raise VizError(f"--image_size {size} is not a multiple of the patch size {patch_size}.")
  source = sources.get_source(f"imagefolder:{args.images}", "", image_size=size)
  count = min(args.num_images, len(source))
  images = np.stack([source[i]["image"] for i in range(count)])       # uint8 [B, S, S, 3]
  mean, std = _view_normalisation(config.method)

  @jax.jit
  def render(encoder_params, images):
    inputs = augment.eval_view(images, size=size, mean=mean, std=std)
    maps = attention_lib.cls_attention(encoder, encoder_params, inputs)
    display = images.astype(jnp.float32) / 255.0
    return attention_lib.render_attention_grid(display, maps, patch_size,
                                               keep_mass=args.keep_mass)

  grid = np.asarray(render(encoder_params, jnp.asarray(images)))
  output = pathlib.Path(args.output) if args.output else workdir / "attention"
  written = [save_png(grid, output / f"attention_{step}.png", min_size=128 * count)]
  for i, row in enumerate(np.split(grid, count, axis=0)):
    written.append(save_png(row, output / f"attention_{step}_{i}.png", min_size=128))
  print(f"wrote {written[0]} and {count} per-image PNGs ({count} images, "
        f"{(grid.shape[1] // size) - 2} heads, {args.keep_mass:.0%} mass masks)")
  return written


SUBCOMMANDS["attention"] = (add_attention_arguments, attention_main)


# ----------------------------------------------------------------------------------------------
# `pictures`: a run's own `Method.visualize` grids (colorization, inpainting, jigsaw, MAE ...).
# ----------------------------------------------------------------------------------------------


def add_pictures_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="run directory (config.json + checkpoints/)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--num_images", type=int, default=8,
                      help="the first N images of the run's test split (as the loop shows)")
  parser.add_argument("--seed", type=int, default=0, help="rng of the pictures (masks, puzzles)")
  parser.add_argument("--output", default="", help="folder for the PNGs (default: W/images)")


def pictures_main(args: argparse.Namespace) -> dict[str, pathlib.Path]:
  """The pictures a run's method draws (`Method.visualize`) for a saved checkpoint.

  The same grids the training loop writes at each evaluation, on the first --num_images images
  of the run's test split, for any step and with code newer than the run: W/images/<name>_<step>.png.
  """
  from ssl_jax import runs
  from ssl_jax.data import sources
  from ssl_jax.methods import build_method

  if args.num_images < 1:
    raise VizError(f"--num_images must be >= 1; got {args.num_images}.")
  workdir = pathlib.Path(args.workdir)
  config = runs.load_config(workdir)
  run = runs.load_checkpoint(workdir, args.step)
  method = build_method(config)
  data = config.data
  test = sources.get_source(data.eval_source or data.source, data.eval_test_split,
                            image_size=data.image_size, data_dir=data.data_dir or None)
  images = np.stack([test[i]["image"] for i in range(min(args.num_images, len(test)))])
  grids = jax.jit(method.visualize)(run.params, run.method_state or {}, images,
                                    jax.random.PRNGKey(args.seed))
  if not grids:
    raise VizError(f"method {config.method.name!r} draws no pictures (Method.visualize is empty).")
  output = pathlib.Path(args.output) if args.output else workdir / "images"
  written = {name: save_png(np.asarray(grid), output / f"{name}_{run.step}.png")
             for name, grid in grids.items()}
  for path in written.values():
    print(f"wrote {path}")
  return written


SUBCOMMANDS["pictures"] = (add_pictures_arguments, pictures_main)


# Keep `main` and the `__main__` guard last, so every SUBCOMMANDS entry above is registered.
def main(argv: list[str] | None = None) -> None:
  """Dispatches to the subcommand named on the command line."""
  parser = argparse.ArgumentParser(prog="python -m ssl_jax.viz", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name, (add_arguments, run) in sorted(SUBCOMMANDS.items()):
    summary = (run.__doc__ or "").strip().splitlines()[0] if run.__doc__ else None
    add_arguments(commands.add_parser(name, help=summary, description=run.__doc__))
  args = parser.parse_args(errors.pop_debug_flag(sys.argv[1:] if argv is None else argv))
  SUBCOMMANDS[args.command][1](args)


def run() -> None:
  """The command line: a user error is one line on stderr and exit status 1 (`ssl_jax.errors`)."""
  with errors.clean_exit("viz"):
    main()


if __name__ == "__main__":
  run()
