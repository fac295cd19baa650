"""Random-access image sources on a fixed square canvas.

Every source follows grain's `RandomAccessDataSource` protocol (`__len__`, `__getitem__`) and
returns records `{'image': uint8 [S, S, 3], 'label': int32 scalar}` with `S = image_size`
(label -1 where the source has no labels). The host does only decoding and the resize to this
canvas; every random view is drawn later on the device (`ssl_jax.data.augment`).

The canvas follows torchvision's `Resize(S)` + `CenterCrop(S)`: the shorter side is resized to
S with PIL's bilinear filter (which antialiases when it shrinks), the longer side to
`int(S * long / short)`, then the centre S x S window is kept. Grayscale and palette images
become 3-channel RGB, alpha is dropped.

Specs understood by `get_source`:

* `digits`: scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16 scaled to
  0..255), upsampled to the canvas. A fixed stratified split (`random_state=0`):
  'train' has 1,497 images, 'test' 300.
* `npz:PATH`: arrays 'images' (uint8 [N,H,W,C] with C in {1,3}, or [N,H,W]) and optionally
  'labels' (integers [N]; without them labels are -1). `{split}` in PATH is replaced by the
  split, e.g. `npz:/work/shared/data/cifar10_{split}.npz`.
* `imagefolder:DIR`: DIR/{split} if that folder exists, else DIR. Class subfolders (sorted names
  are label ids 0..K-1, searched recursively) or a flat folder of images (labels -1).
  Unreadable files are skipped and counted (`num_skipped`).
* `tfds:NAME[:SPLIT]`: a prepared TFDS dataset read with `tfds.data_source` (array_record,
  random access, decoded lazily). SPLIT overrides the split argument and may be any TFDS split
  string (`train[:90%]`). A dataset prepared only as TFRecord is read once through tf.data into
  memory when its canvas fits in `MAX_IN_MEMORY_BYTES`; a larger one must be re-prepared with
  `tfds build NAME --file_format=array_record`. Nothing is downloaded here: on a pod every
  process would race to prepare the same files, so preparation is a separate, explicit step.
"""

from __future__ import annotations

import concurrent.futures
import re
import zipfile
from typing import Any, Sequence

from absl import logging
from etils import epath
import numpy as np
from PIL import Image

from ssl_jax import errors
from ssl_jax.data import workers

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm",
                    ".pgm")
DIGITS_TEST_SIZE = 300
DIGITS_SPLIT_SEED = 0
# A TFRecord-only TFDS split is loaded into host memory only up to this size (per process).
MAX_IN_MEMORY_BYTES = 4 << 30
# How many neighbouring records __getitem__ tries when a file that passed the header check
# still fails to decode (e.g. a truncated JPEG), before giving up.
_MAX_DECODE_RETRIES = 16
_VERIFY_THREADS = 16
# imagefolder split folders: a split name -> the folders that hold it, in order of preference.
# A held-out split never falls back to the training images.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation"),
                 "validation": ("validation", "val"), "test": ("test", "val", "validation")}
HELD_OUT_SPLITS = ("val", "validation", "test")


class DataError(errors.UserError, ValueError):
  """A dataset spec, file or folder cannot be read as asked; the message says how to fix it."""


class DataNotFoundError(DataError, FileNotFoundError):
  """The dataset named by a spec does not exist (where the message says)."""


def _check_image_size(image_size: Any) -> int:
  is_int = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
  if not is_int or image_size < 1:
    raise DataError(f"image_size must be a positive int (the canvas side), got {image_size!r}.")
  return int(image_size)


def _resize_shorter_and_center_crop(image: Image.Image, size: int) -> Image.Image:
  """torchvision's Resize(size) then CenterCrop(size), on a PIL image."""
  width, height = image.size
  if (width, height) == (size, size):
    return image
  if width <= height:
    new_width, new_height = size, max(size, int(size * height / width))
  else:
    new_width, new_height = max(size, int(size * width / height)), size
  image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
  # torchvision rounds the crop offset to nearest rather than flooring it.
  left = int(round((new_width - size) / 2.0))
  top = int(round((new_height - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def to_canvas(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H,W], [H,W,1], [H,W,3] or [H,W,4] -> uint8 [size, size, 3] (see module docstring)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise DataError(f"Images must be uint8 (0..255), got dtype {image.dtype}. Convert them "
                    "with np.clip(x, 0, 255).astype(np.uint8) first.")
  if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
    channels = image.shape[-1]
  elif image.ndim == 2:
    channels = 1
  else:
    raise DataError(f"An image must be [H,W] or [H,W,C] with C in (1, 3, 4), got shape "
                    f"{image.shape}.")
  if channels == 4:
    image = image[..., :3]
  if image.shape[0] == image.shape[1] == size:
    pixels = image
  else:
    # Resize grayscale before it is tiled to RGB: a third of the work.
    mode_input = image.reshape(image.shape[:2]) if channels == 1 else image
    pixels = np.asarray(_resize_shorter_and_center_crop(Image.fromarray(mode_input), size))
  if pixels.ndim == 2 or pixels.shape[-1] == 1:
    pixels = np.repeat(pixels.reshape(pixels.shape[:2] + (1,)), 3, axis=-1)
  return np.ascontiguousarray(pixels, dtype=np.uint8)


def _record(image: np.ndarray, label: int) -> dict[str, np.ndarray]:
  return {"image": image, "label": np.asarray(label, dtype=np.int32)}


def read_batch(source, indices: Sequence[int],
               pool: concurrent.futures.Executor | None = None) -> dict[str, np.ndarray]:
  """Records `indices` of `source` as one batch `{'image': [n,S,S,3], 'label': int32 [n]}`.

  A source with `get_batch` (in-memory arrays) reads the batch in one call; any other reads
  record by record, on `pool`'s threads when given (PIL releases the GIL for much of a
  decode, so threads overlap file reads and decoding).
  """
  if hasattr(source, "get_batch"):
    return source.get_batch(indices)
  records = list((pool.map if pool else map)(source.__getitem__, [int(i) for i in indices]))
  return {"image": np.stack([r["image"] for r in records]),
          "label": np.asarray([r["label"] for r in records], np.int32)}


class ArraySource(workers.ExitsWithParent):
  """Images held in host memory; each is put on the canvas when it is read.

  `description` names where the arrays came from; it is part of `repr`, which grain stores in
  the iterator state and compares on restore, so it must not contain an object address.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray | None, *, image_size: int,
               num_classes: int | None, description: str):
    self._image_size = _check_image_size(image_size)
    images = np.asarray(images)
    if len(images) == 0:
      raise DataError(f"{description} has no images; a source needs at least one record.")
    if labels is None:
      labels = np.full((len(images),), -1, np.int32)
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
      raise DataError(f"{description}: labels must have shape [{len(images)}] (one per image), "
                      f"got {labels.shape}.")
    self._images = images
    self._labels = labels.astype(np.int32)
    self.num_classes = num_classes
    self._description = description

  @property
  def labels(self) -> np.ndarray:
    """Every record's label (int32 [N]), read without touching the images."""
    return self._labels

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return _record(to_canvas(self._images[index], self._image_size), self._labels[index])

  def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Records `indices` stacked: `{'image': uint8 [n,S,S,3], 'label': int32 [n]}`.

    Equal to stacking `self[i]` for every i (tested), in one numpy gather when the arrays are
    already on the canvas (digits, CIFAR-sized npz, TFRecord-only TFDS): the per-record path
    costs a Python call and a copy per image, which caps the host at a few thousand images/s.
    """
    indices = np.asarray(indices, np.int64)
    images = self._images[indices]
    size = self._image_size
    if images.shape[1:] == (size, size, 1):
      images = np.repeat(images, 3, axis=-1)
    elif images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
      images = np.stack([to_canvas(image, size) for image in images])  # Resized per image.
    return {"image": np.ascontiguousarray(images), "label": self._labels[indices]}

  def __repr__(self) -> str:
    return (f"ArraySource({self._description}, num_records={len(self)}, "
            f"image_size={self._image_size})")


def digits_source(split: str, *, image_size: int) -> ArraySource:
  """scikit-learn's 8x8 digits, 0..16 scaled to uint8 and upsampled once to the canvas."""
  from sklearn import datasets, model_selection  # Heavy import, only needed for this source.

  image_size = _check_image_size(image_size)
  if split not in ("train", "test"):
    raise DataError(f"The digits source has splits 'train' (1497 images) and 'test' (300), "
                    f"got split {split!r}.")
  digits = datasets.load_digits()
  pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  labels = digits.target.astype(np.int32)
  train_ids, test_ids = model_selection.train_test_split(
      np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  ids = np.sort(train_ids if split == "train" else test_ids)
  canvases = np.stack([to_canvas(pixels[i], image_size) for i in ids])
  return ArraySource(canvases, labels[ids], image_size=image_size, num_classes=10,
                     description=f"digits:{split}")


def npz_source(path_template: str, split: str, *, image_size: int) -> ArraySource:
  """An .npz archive with 'images' (uint8 NHWC) and optional 'labels' (ints)."""
  path = path_template.replace("{split}", split)
  expected = ("an .npz archive with 'images' uint8 [N,H,W,C] (C = 1 or 3) and 'labels' int [N] "
              "(np.savez_compressed(path, images=..., labels=...))")
  if not epath.Path(path).exists():
    raise DataNotFoundError(f"npz source: no file at {path!r} (from spec path {path_template!r} "
                            f"and split {split!r}); expected {expected}.")
  with epath.Path(path).open("rb") as file:
    try:
      archive = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
      # Pickled or truncated data, or not numpy at all ("contains pickled data" from numpy).
      raise DataError(f"npz source {path!r} is not a readable .npz archive ({error}); "
                      f"expected {expected}.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise DataError(f"npz source {path!r} holds a single array (an .npy file, shape "
                      f"{getattr(archive, 'shape', '?')}), not an .npz archive; expected "
                      f"{expected}.")
    with archive:
      keys = set(archive.files)
      if "images" not in keys:
        raise DataError(f"npz source {path!r} has arrays {sorted(keys)} but no 'images'; "
                        f"expected {expected}.")
      images = archive["images"]
      labels = archive["labels"] if "labels" in keys else None
      class_names = archive["class_names"] if "class_names" in keys else None
  if images.dtype != np.uint8:
    raise DataError(f"npz source {path!r}: 'images' has dtype {images.dtype}, expected uint8 "
                    f"(0..255); expected {expected}.")
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(f"npz source {path!r}: 'images' has shape {images.shape}, expected "
                    f"[N,H,W,C] with C = 1 or 3; expected {expected}.")
  num_classes = None
  if labels is None:
    logging.info("npz source %s has no 'labels' array; its labels are -1.", path)
  else:
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
      raise DataError(f"npz source {path!r}: 'labels' has dtype {labels.dtype} and shape "
                      f"{labels.shape}, expected integers of shape [{len(images)}].")
    if len(labels) and labels.min() < 0:
      raise DataError(f"npz source {path!r}: labels must be >= 0, found {labels.min()}.")
    num_classes = (len(class_names) if class_names is not None
                   else int(labels.max()) + 1 if len(labels) else None)
  return ArraySource(images, labels, image_size=image_size, num_classes=num_classes,
                     description=f"npz:{path}")


def _decode_file(path: epath.Path, size: int) -> np.ndarray:
  with path.open("rb") as file, Image.open(file) as image:
    # JPEG can decode at 1/2, 1/4 or 1/8 scale while staying at least `size` on both sides:
    # far less work for large photos, same canvas up to resampling.
    image.draft("RGB", (size, size))
    image = image.convert("RGB")
    return np.asarray(_resize_shorter_and_center_crop(image, size), dtype=np.uint8)


def _header_is_readable(path: epath.Path) -> bool:
  try:
    with path.open("rb") as file, Image.open(file) as image:
      image.verify()
    return True
  except Exception:  # pylint: disable=broad-except
    # PIL signals a broken file with many exception types (OSError, SyntaxError, struct.error,
    # ValueError, DecompressionBombError ...); any of them means: skip this file.
    return False


def _image_files(folder: epath.Path, recursive: bool) -> list[epath.Path]:
  # walk() lists names without a stat per file, which matters for a million files on GCS.
  found = []
  for root, subfolders, names in folder.walk():
    subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    found.extend(root / name for name in names
                 if not name.startswith(".") and epath.Path(name).suffix.lower()
                 in IMAGE_EXTENSIONS)
    if not recursive:
      break
  return sorted(found, key=str)


def split_folder(base: epath.Path, split: str) -> epath.Path:
  """The folder of `split` under an imagefolder root (ImageNet layout: train/ + val/).

  `split` itself if such a folder exists, else a folder of the same split under another usual
  name (`SPLIT_FOLDERS`: a 'test' request reads val/ where there is no test/), else the root
  itself when it has no split folders at all. A held-out split never reads the training
  images: without its folder it is an error, since a test accuracy measured on training images
  is a wrong number.
  """
  if not split:
    return base
  if (base / split).is_dir():
    return base / split
  present = [name for name in ("train", "val", "validation", "test") if (base / name).is_dir()]
  for name in SPLIT_FOLDERS.get(split, ()):
    if name in present:
      logging.info("imagefolder: split %r is read from %s.", split, base / name)
      return base / name
  if split in HELD_OUT_SPLITS:
    raise DataError(
                    f"imagefolder:{base} has no held-out folder for split {split!r} "
                    f"({', '.join(n + '/' for n in SPLIT_FOLDERS[split])}), so evaluating would report "
                    "accuracy on training images. Add one (DIR/train/<class>/..., DIR/val/<class>/...), "
                    "point data.eval_source at a labelled held-out set, or skip evaluation with "
                    "--config.eval.protocols=")
  if present:
    raise DataError(f"imagefolder:{base} has split folders {present} but none for split "
                    f"{split!r}.")
  return base


class ImageFolderSource(workers.ExitsWithParent):
  """Image files in class subfolders (labels = sorted folder index) or in one flat folder.

  Every file's header is checked with PIL `verify()` when the source is built; files that fail
  are skipped and counted in `num_skipped`. A file that passes but still fails to decode when
  read (a truncated JPEG) is replaced, deterministically, by the next readable record.
  """

  def __init__(self, root: str, split: str, *, image_size: int):
    self._image_size = _check_image_size(image_size)
    base = epath.Path(root)
    if not base.is_dir():
      raise DataNotFoundError(f"imagefolder source: {root!r} is not a folder. Expected a folder "
                              "of images, or of class subfolders of images, optionally under "
                              "per-split folders (DIR/train/..., DIR/test/...).")
    folder = split_folder(base, split)
    class_dirs = sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.name)
    if class_dirs:
      self.class_names = [d.name for d in class_dirs]
      files, labels = [], []
      for label, class_dir in enumerate(class_dirs):
        class_files = _image_files(class_dir, recursive=True)
        if not class_files:
          logging.warning("imagefolder: class folder %s has no images; its label id %d stays "
                          "reserved.", class_dir, label)
        files.extend(class_files)
        labels.extend([label] * len(class_files))
      ignored = len(_image_files(folder, recursive=False))
      if ignored:
        logging.warning("imagefolder: %d image files directly in %s are ignored because the "
                        "folder has class subfolders.", ignored, folder)
      self.num_classes = len(class_dirs)
    else:
      self.class_names = None
      files = _image_files(folder, recursive=False)
      labels = [-1] * len(files)
      self.num_classes = None
    with concurrent.futures.ThreadPoolExecutor(_VERIFY_THREADS) as pool:
      readable = list(pool.map(_header_is_readable, files))
    self.num_skipped = readable.count(False)
    if self.num_skipped:
      logging.warning("imagefolder: skipped %d unreadable image files of %d in %s.",
                      self.num_skipped, len(files), folder)
    self._files = [str(f) for f, ok in zip(files, readable) if ok]
    self._labels = np.asarray([l for l, ok in zip(labels, readable) if ok], np.int32)
    self._folder = str(folder)
    if not self._files:
      raise DataError(f"imagefolder source: no readable images in {self._folder!r} "
                      f"({self.num_skipped} unreadable files, extensions looked for: "
                      f"{', '.join(IMAGE_EXTENSIONS)}).")

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    for offset in range(_MAX_DECODE_RETRIES):
      position = (index + offset) % len(self._files)
      try:
        image = _decode_file(epath.Path(self._files[position]), self._image_size)
      except Exception as error:  # pylint: disable=broad-except
        logging.warning("imagefolder: cannot decode %s (%s); using the next record instead.",
                        self._files[position], error)
        continue
      return _record(image, self._labels[position])
    raise OSError(f"imagefolder: {_MAX_DECODE_RETRIES} consecutive files, starting at "
                  f"{self._files[index]!r}, fail to decode; check or replace them.")

  def __repr__(self) -> str:
    return (f"ImageFolderSource({self._folder!r}, num_records={len(self)}, "
            f"image_size={self._image_size})")


class TfdsSource(workers.ExitsWithParent):
  """A TFDS split prepared as array_record, read with `tfds.data_source` (random access)."""

  def __init__(self, records: Sequence[dict[str, Any]], *, name: str, split: str,
               data_dir: str | None, image_size: int):
    self._records = records
    self._image_size = _check_image_size(image_size)
    self._name, self._split, self._data_dir = name, split, data_dir
    if len(records) == 0:
      raise DataError(f"TFDS split {name}:{split} has no records.")
    features = records.dataset_info.features
    if "image" not in features:
      raise DataError(f"TFDS dataset {name!r} has no 'image' feature (it has "
                      f"{sorted(features.keys())}); only image datasets are supported.")
    self._has_label = "label" in features
    self.num_classes = (getattr(features["label"], "num_classes", None)
                        if self._has_label else None)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self._records[index]
    label = example["label"] if self._has_label else -1
    return _record(to_canvas(example["image"], self._image_size), label)

  def __repr__(self) -> str:
    return (f"TfdsSource(name={self._name!r}, split={self._split!r}, "
            f"data_dir={self._data_dir!r}, num_records={len(self)}, "
            f"image_size={self._image_size})")


def _import_tfds():
  """tensorflow_datasets, imported only by TFDS sources (it imports TensorFlow)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise DataError(f"tfds: data sources need TensorFlow Datasets and TensorFlow, which do not "
                    f"import here ({error}). Install them with `pip install .[tf]`, or use an "
                    "npz:, imagefolder: or digits source.") from None
  return tfds


def _build_command(name: str, data_dir: str | None) -> str:
  return (f"tfds build {name} --file_format=array_record"
          + (f" --data_dir={data_dir}" if data_dir else ""))


def _tfrecord_in_memory(builder, name: str, split: str, *, image_size: int,
                        data_dir: str | None) -> ArraySource:
  """Reads a TFRecord-only split once through tf.data onto canvases held in memory."""
  tfds = _import_tfds()

  num_records = builder.info.splits[split].num_examples
  needed = num_records * image_size * image_size * 3
  if needed > MAX_IN_MEMORY_BYTES:
    raise DataError(
        f"TFDS dataset {name!r} is prepared as {builder.info.file_format.value}, which has no "
        f"random access, and split {split!r} would need {needed / 2**30:.1f} GiB in memory at "
        f"image_size={image_size} (limit {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB). Prepare it as "
        f"array_record: `{_build_command(name, data_dir)}`.")
  logging.info("TFDS %s:%s is TFRecord-only; reading its %d records into memory.", name, split,
               num_records)
  features = builder.info.features
  has_label = "label" in features
  images, labels = [], []
  for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    images.append(to_canvas(example["image"], image_size))
    labels.append(example["label"] if has_label else -1)
  num_classes = getattr(features["label"], "num_classes", None) if has_label else None
  return ArraySource(np.stack(images) if images else np.zeros((0,), np.uint8),
                     np.asarray(labels, np.int32), image_size=image_size,
                     num_classes=num_classes, description=f"tfds:{name}:{split}")


def tfds_source(name: str, split: str, *, image_size: int,
                data_dir: str | None = None) -> TfdsSource | ArraySource:
  """A prepared TFDS split: array_record via `tfds.data_source`, TFRecord via tf.data."""
  tfds = _import_tfds()

  image_size = _check_image_size(image_size)
  try:
    records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except tfds.core.registered.DatasetNotFoundError:
    # TFDS's own message lists every registered dataset; say only what is wrong.
    raise DataError(f"TFDS has no dataset named {name!r}; see "
                    "https://www.tensorflow.org/datasets/catalog for the names.") from None
  except ValueError as error:  # A split or slice tfds rejects ("Unknown split 'val'...").
    raise DataError(f"tfds:{name}:{split}: {error}") from None
  except (NotImplementedError, KeyError) as error:
    # NotImplementedError: a TFRecord-only dataset, or (some tfds versions) one not prepared at
    # all; KeyError: not prepared (other versions: its splits are empty), or no such split.
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      raise DataNotFoundError(
          f"TFDS dataset {name!r} is not prepared under {builder.data_dir!r}. Prepare it once "
          f"(on each host, or on a shared gs:// data_dir): `{_build_command(name, data_dir)}`."
      ) from None
    prepared_splits = sorted(builder.info.splits)
    if split.split("[")[0] not in prepared_splits:
      raise DataError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                      f"{prepared_splits} (choose one with tfds:{name}:SPLIT).") from None
    if isinstance(error, KeyError):
      raise
    return _tfrecord_in_memory(builder, name, split, image_size=image_size, data_dir=data_dir)
  return TfdsSource(records, name=name, split=split, data_dir=data_dir, image_size=image_size)


_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _parse_tfds(arg: str, split: str) -> tuple[str, str]:
  """'NAME', 'NAME:SPLIT', 'NAME:1.2.3' or 'NAME:1.2.3:SPLIT' -> (name, split)."""
  name, _, rest = arg.partition(":")
  if rest:
    version, _, after_version = rest.partition(":")
    if _VERSION.match(version):
      name, rest = f"{name}:{version}", after_version
  return name, (rest or split)


SPEC_FORMS = ("digits", "npz:PATH (may contain {split})", "imagefolder:DIR",
              "tfds:NAME[:SPLIT]")


def get_source(spec: str, split: str, *, image_size: int, data_dir: str | None = None):
  """Builds the source named by `spec` (see the module docstring) for `split`."""
  kind, _, arg = spec.partition(":")
  if kind == "digits" and not arg:
    return digits_source(split, image_size=image_size)
  if kind in ("npz", "imagefolder", "tfds") and not arg:
    raise DataError(f"Data spec {spec!r} needs a value after '{kind}:'; valid forms: "
                    f"{', '.join(SPEC_FORMS)}.")
  if kind == "npz":
    return npz_source(arg, split, image_size=image_size)
  if kind == "imagefolder":
    return ImageFolderSource(arg, split, image_size=image_size)
  if kind == "tfds":
    name, tfds_split = _parse_tfds(arg, split)
    return tfds_source(name, tfds_split, image_size=image_size, data_dir=data_dir)
  raise DataError(f"Unknown data spec {spec!r}; valid forms: {', '.join(SPEC_FORMS)}.")
