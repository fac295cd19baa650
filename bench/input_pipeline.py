r"""Host input pipeline throughput: the train loader alone, images/s, for any data source.

    python bench/input_pipeline.py --source SPEC --image_size N [--batch_size 256] \
        [--workers 0[,2,...]] [--read_threads 8[,1,...]] [--batches 20] [--split train]
    python bench/input_pipeline.py --make_imagefolder DIR [--num_images 512] [--from_source SPEC]

SPEC is any `data.source` (`npz:PATH`, `imagefolder:DIR`, `tfds:NAME`, `digits`). For every
combination of --workers and --read_threads it builds the training loader exactly as a run does
(`ssl_jax.data.pipeline.make_train_loader`, one process) and prints one JSON line with
`loader_images_per_sec` over --batches batches, after --warmup batches (start-up, worker
spawn), and for workers=0 `images_per_cpu_second`, the per-core rate (CPU time, so it holds on
a busy machine): a chip that trains at R images/s needs about R / that rate host cores
(docs/performance.md, "Host input pipeline").

--make_imagefolder writes JPEGs to DIR/train/<label>/ and exits: the records of --from_source
on its --image_size canvas (e.g. CIFAR-10 from ../shared/data at 32) or, without it, crops of
about ImageNet's average size (400x350) of the photos in ../shared/data/photos.npz (random
textures where that file is absent). Then bench `--source imagefolder:DIR`.
"""

import argparse
import itertools
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402

from bench import common  # noqa: E402
from ssl_jax.data import pipeline, sources  # noqa: E402

PHOTOS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "photos.npz"


def photo_crops(count: int, rng: np.random.Generator):
  """(image uint8 [350, 400, 3], label 0) crops of the bundled photos, or random textures."""
  photos = []
  if PHOTOS.exists():
    with np.load(PHOTOS) as archive:
      photos = [archive[k] for k in archive.files]
  photos = [p if p.ndim == 3 else np.repeat(p[..., None], 3, -1) for p in photos]
  for i in range(count):
    if not photos:
      yield rng.integers(0, 256, (350, 400, 3), dtype=np.uint8), 0
      continue
    photo = photos[i % len(photos)]
    h, w = photo.shape[:2]
    ch, cw = min(h, 350), min(w, 400)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    yield photo[top:top + ch, left:left + cw], 0


def source_records(spec: str, count: int, image_size: int):
  """(image [S,S,3], label) of the first `count` records of `spec`'s train split."""
  source = sources.get_source(spec, "train", image_size=image_size)
  for i in range(min(count, len(source))):
    record = source[i]
    yield record["image"], int(record["label"])


def make_imagefolder(directory: pathlib.Path, records) -> int:
  written = 0
  for i, (image, label) in enumerate(records):
    folder = directory / "train" / f"class_{max(label, 0):03d}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / f"{i:06d}.jpg", quality=90)
    written += 1
  return written


def loader_images_per_sec(source, *, batch_size: int, workers: int, read_threads: int,
                          batches: int, warmup: int) -> dict[str, float | str]:
  """Wall-clock images/s over `batches` batches, the loader's class, seconds to the first
  batch and, without worker processes, images per CPU second of this process (all its
  threads): the per-core rate, which other load on the machine does not change much."""
  start = time.perf_counter()
  loader = pipeline.make_train_loader(source, global_batch_size=batch_size, seed=0,
                                      process_index=0, process_count=1, worker_count=workers,
                                      read_threads=read_threads)
  iterator = iter(loader)
  next(iterator)
  first = time.perf_counter() - start
  for _ in range(warmup):
    next(iterator)
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
  assert batch["image"].shape[0] == batch_size
  images = batches * batch_size
  result = {"loader": type(loader).__name__, "first_batch_seconds": round(first, 3),
            "loader_images_per_sec": round(images / seconds, 1)}
  if workers == 0:
    result["images_per_cpu_second"] = round(images / max(cpu_seconds, 1e-9), 1)
  return result


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",")]


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", help="a data.source spec: npz:PATH, imagefolder:DIR, ...")
  parser.add_argument("--split", default="train")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--workers", type=_ints, default=[0],
                      help="grain worker processes (data.worker_count), comma-separated")
  parser.add_argument("--read_threads", type=_ints, default=[8],
                      help="reading threads per process, comma-separated")
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--make_imagefolder", default="", help="write JPEGs here and exit")
  parser.add_argument("--num_images", type=int, default=512)
  parser.add_argument("--from_source", default="", help="in-memory source the JPEGs come from")
  args = parser.parse_args()
  if args.make_imagefolder:
    directory = pathlib.Path(args.make_imagefolder)
    records = (source_records(args.from_source, args.num_images, args.image_size)
               if args.from_source
               else photo_crops(args.num_images, np.random.default_rng(0)))
    common.emit({"bench": "input_pipeline", "wrote": str(directory),
                 "images": make_imagefolder(directory, records)})
    return
  if not args.source:
    parser.error("--source SPEC is required (or --make_imagefolder DIR).")
  flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags.
  source = sources.get_source(args.source, args.split, image_size=args.image_size,
                              data_dir=args.data_dir)
  for workers, read_threads in itertools.product(args.workers, args.read_threads):
    measured = loader_images_per_sec(
        source, batch_size=args.batch_size, workers=workers, read_threads=read_threads,
        batches=args.batches, warmup=args.warmup)
    common.emit({"bench": "input_pipeline", "source": args.source, "split": args.split,
                 "image_size": args.image_size, "batch_size": args.batch_size,
                 "workers": workers, "read_threads": read_threads, "cores": os.cpu_count(),
                 "load_average_1min": os.getloadavg()[0], **measured})


if __name__ == "__main__":
  main()
