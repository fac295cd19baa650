"""Sources: records on a fixed RGB canvas, splits, labels and clear errors for bad input."""

import collections
import pathlib

import numpy as np
from PIL import Image
import pytest

from ssl_jax.data import sources


def _multiset(source):
  return collections.Counter(
      (source[i]["image"].tobytes(), int(source[i]["label"])) for i in range(len(source)))


# ----------------------------------------------------------------------------- canvas


def test_canvas_is_a_no_op_at_the_target_size():
  image = np.random.RandomState(0).randint(0, 256, (6, 6, 3), dtype=np.uint8)
  np.testing.assert_array_equal(sources.to_canvas(image, 6), image)


def test_canvas_center_crops_the_longer_side():
  # Shorter side already 4: no resampling, only the centre 4 of 8 columns are kept.
  image = np.random.RandomState(1).randint(0, 256, (4, 8, 3), dtype=np.uint8)
  np.testing.assert_array_equal(sources.to_canvas(image, 4), image[:, 2:6])
  tall = np.random.RandomState(2).randint(0, 256, (9, 4, 3), dtype=np.uint8)
  # torchvision rounds the offset (9 - 4) / 2 = 2.5 to nearest even: 2.
  np.testing.assert_array_equal(sources.to_canvas(tall, 4), tall[2:6])


def test_canvas_resizes_shorter_side_with_pil_bilinear():
  image = np.random.RandomState(3).randint(0, 256, (10, 20, 3), dtype=np.uint8)
  expected = np.asarray(Image.fromarray(image).resize((10, 5), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(sources.to_canvas(image, 5), expected[:, 2:7])


def test_canvas_turns_grayscale_and_rgba_into_rgb():
  gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
  for layout in (gray, gray[..., None]):
    canvas = sources.to_canvas(layout, 4)
    assert canvas.shape == (4, 4, 3)
    for channel in range(3):
      np.testing.assert_array_equal(canvas[..., channel], gray)
  rgba = np.random.RandomState(4).randint(0, 256, (4, 4, 4), dtype=np.uint8)
  np.testing.assert_array_equal(sources.to_canvas(rgba, 4), rgba[..., :3])


def test_canvas_rejects_float_and_bad_shapes():
  with pytest.raises(ValueError, match="uint8"):
    sources.to_canvas(np.zeros((4, 4, 3), np.float32), 4)
  with pytest.raises(ValueError, match=r"\[H,W,C\]"):
    sources.to_canvas(np.zeros((4, 4, 2), np.uint8), 4)


# ----------------------------------------------------------------------------- digits


def test_digits_splits_are_fixed_stratified_and_cover_the_dataset():
  from sklearn import datasets

  train = sources.get_source("digits", "train", image_size=8)
  test = sources.get_source("digits", "test", image_size=8)
  assert (len(train), len(test)) == (1497, 300)
  assert train.num_classes == test.num_classes == 10
  record = train[0]
  assert record["image"].shape == (8, 8, 3) and record["image"].dtype == np.uint8
  assert record["label"].dtype == np.int32

  # At the native 8x8 size the canvas is exactly round(x * 255 / 16), tiled to RGB, so the two
  # splits together are the whole dataset, each image once.
  digits = datasets.load_digits()
  scaled = np.round(digits.images * 255.0 / 16.0).astype(np.uint8)
  everything = collections.Counter(
      (np.repeat(img[..., None], 3, -1).tobytes(), int(y)) for img, y in zip(scaled,
                                                                            digits.target))
  assert _multiset(train) + _multiset(test) == everything

  test_counts = np.bincount([int(test[i]["label"]) for i in range(len(test))], minlength=10)
  expected = 300 * np.bincount(digits.target) / len(digits.target)
  assert np.all(np.abs(test_counts - expected) <= 1)  # Stratified.


def test_digits_are_deterministic_and_upsampled():
  first = sources.get_source("digits", "test", image_size=32)
  second = sources.get_source("digits", "test", image_size=32)
  assert first[0]["image"].shape == (32, 32, 3)
  for i in (0, 17, 299):
    np.testing.assert_array_equal(first[i]["image"], second[i]["image"])
    assert first[i]["label"] == second[i]["label"]
  labels = [int(first[i]["label"]) for i in range(len(first))]
  assert min(labels) == 0 and max(labels) == 9


def test_digits_rejects_unknown_split():
  with pytest.raises(ValueError, match="'train'"):
    sources.get_source("digits", "validation", image_size=8)


# ----------------------------------------------------------------------------- npz


def _write_npz(path, **arrays):
  np.savez_compressed(path, **arrays)
  return str(path)


def test_npz_split_template_and_exact_records(tmp_path):
  rng = np.random.RandomState(0)
  train_images = rng.randint(0, 256, (5, 6, 6, 3), dtype=np.uint8)
  test_images = rng.randint(0, 256, (3, 6, 6, 3), dtype=np.uint8)
  _write_npz(tmp_path / "toy_train.npz", images=train_images,
             labels=np.array([0, 1, 2, 1, 0]))
  _write_npz(tmp_path / "toy_test.npz", images=test_images, labels=np.array([2, 2, 0]),
             class_names=np.array(["a", "b", "c", "d"]))
  template = f"npz:{tmp_path}/toy_{{split}}.npz"
  train = sources.get_source(template, "train", image_size=6)
  test = sources.get_source(template, "test", image_size=6)
  assert (len(train), len(test)) == (5, 3)
  assert train.num_classes == 3  # max label + 1
  assert test.num_classes == 4  # len(class_names) wins
  np.testing.assert_array_equal(train[3]["image"], train_images[3])
  assert train[3]["label"] == 1 and train[3]["label"].dtype == np.int32
  np.testing.assert_array_equal(test[1]["image"], test_images[1])


def test_npz_grayscale_without_labels(tmp_path):
  images = np.random.RandomState(0).randint(0, 256, (4, 5, 5, 1), dtype=np.uint8)
  path = _write_npz(tmp_path / "gray.npz", images=images)
  source = sources.get_source(f"npz:{path}", "train", image_size=5)
  assert source.num_classes is None
  record = source[2]
  assert record["label"] == -1
  np.testing.assert_array_equal(record["image"], np.repeat(images[2], 3, axis=-1))


def test_npz_errors_say_what_is_expected(tmp_path):
  missing = tmp_path / "nothing_{split}.npz"
  with pytest.raises(FileNotFoundError, match="nothing_train.npz.*'images' uint8"):
    sources.get_source(f"npz:{missing}", "train", image_size=4)
  no_images = _write_npz(tmp_path / "no_images.npz", pixels=np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match=r"no 'images'.*\['pixels'\]|\['pixels'\].*no 'images'"):
    sources.get_source(f"npz:{no_images}", "train", image_size=4)
  floats = _write_npz(tmp_path / "floats.npz", images=np.zeros((2, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="float32.*uint8"):
    sources.get_source(f"npz:{floats}", "train", image_size=4)
  bad_shape = _write_npz(tmp_path / "shape.npz", images=np.zeros((2, 4, 4, 5), np.uint8))
  with pytest.raises(ValueError, match=r"\(2, 4, 4, 5\)"):
    sources.get_source(f"npz:{bad_shape}", "train", image_size=4)
  bad_labels = _write_npz(tmp_path / "labels.npz", images=np.zeros((2, 4, 4, 3), np.uint8),
                          labels=np.zeros((3,), np.int32))
  with pytest.raises(ValueError, match=r"'labels'.*\[2\]"):
    sources.get_source(f"npz:{bad_labels}", "train", image_size=4)
  empty = _write_npz(tmp_path / "empty.npz", images=np.zeros((0, 4, 4, 3), np.uint8),
                     labels=np.zeros((0,), np.int32))
  with pytest.raises(ValueError, match="no images"):
    sources.get_source(f"npz:{empty}", "train", image_size=4)


def test_shared_cifar10_npz(shared_data):
  source = sources.get_source(f"npz:{shared_data}/cifar10_{{split}}.npz", "test", image_size=32)
  assert len(source) == 1000 and source.num_classes == 10
  # The official test-set label order (shared/data/README.md).
  assert [int(source[i]["label"]) for i in range(10)] == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
  with np.load(shared_data / "cifar10_test.npz") as archive:
    np.testing.assert_array_equal(source[7]["image"], archive["images"][7])


# ----------------------------------------------------------------------------- imagefolder


def _save(path: pathlib.Path, pixels: np.ndarray, **kwargs):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, **kwargs)


def _pixels(seed, shape=(8, 8, 3)):
  return np.random.RandomState(seed).randint(0, 256, shape, dtype=np.uint8)


def test_imagefolder_classes_and_corrupt_files(tmp_path):
  cat0, cat1, dog0 = _pixels(0), _pixels(1, (8, 12, 3)), _pixels(2)
  _save(tmp_path / "train" / "cat" / "a.png", cat0)
  _save(tmp_path / "train" / "cat" / "nested" / "b.png", cat1)
  _save(tmp_path / "train" / "dog" / "c.jpg", dog0)
  (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"this is not a png")
  (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
  source = sources.get_source(f"imagefolder:{tmp_path}", "train", image_size=8)
  assert len(source) == 3 and source.num_skipped == 1
  assert source.num_classes == 2 and source.class_names == ["cat", "dog"]
  records = [source[i] for i in range(3)]
  assert [int(r["label"]) for r in records] == [0, 0, 1]
  np.testing.assert_array_equal(records[0]["image"], cat0)  # PNG is lossless.
  np.testing.assert_array_equal(records[1]["image"], sources.to_canvas(cat1, 8))
  with Image.open(tmp_path / "train" / "dog" / "c.jpg") as decoded:
    np.testing.assert_array_equal(records[2]["image"], np.asarray(decoded.convert("RGB")))


def test_imagefolder_flat_folder_without_split_subfolder(tmp_path):
  gray = _pixels(3, (8, 8))
  _save(tmp_path / "one.png", _pixels(4))
  _save(tmp_path / "two.bmp", gray)
  source = sources.get_source(f"imagefolder:{tmp_path}", "train", image_size=8)
  assert len(source) == 2 and source.num_classes is None and source.num_skipped == 0
  assert all(int(source[i]["label"]) == -1 for i in range(2))
  np.testing.assert_array_equal(source[1]["image"], np.repeat(gray[..., None], 3, -1))


def test_imagefolder_truncated_file_is_replaced_by_the_next_record(tmp_path):
  _save(tmp_path / "a.jpg", _pixels(5, (64, 64, 3)))
  _save(tmp_path / "b.png", _pixels(6))
  # A truncated JPEG passes PIL's header check but fails to decode.
  data = (tmp_path / "a.jpg").read_bytes()
  (tmp_path / "a.jpg").write_bytes(data[:len(data) // 2])
  source = sources.get_source(f"imagefolder:{tmp_path}", "train", image_size=8)
  assert len(source) == 2
  np.testing.assert_array_equal(source[0]["image"], source[1]["image"])


def test_imagefolder_empty_or_missing_folder(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty"):
    sources.get_source(f"imagefolder:{tmp_path / 'empty'}", "train", image_size=8)
  (tmp_path / "corrupt").mkdir()
  (tmp_path / "corrupt" / "x.png").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="1 unreadable"):
    sources.get_source(f"imagefolder:{tmp_path / 'corrupt'}", "train", image_size=8)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    sources.get_source(f"imagefolder:{tmp_path / 'nowhere'}", "train", image_size=8)


# ----------------------------------------------------------------------------- tfds


def test_tfds_spec_parsing():
  assert sources._parse_tfds("cifar10", "train") == ("cifar10", "train")
  assert sources._parse_tfds("cifar10:train[:10%]", "test") == ("cifar10", "train[:10%]")
  assert sources._parse_tfds("cifar10:3.0.2", "test") == ("cifar10:3.0.2", "test")
  assert sources._parse_tfds("cifar10:3.0.2:train", "test") == ("cifar10:3.0.2", "train")


def test_tfds_mock_data_source():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=5):
    source = sources.get_source("tfds:cifar10", "train", image_size=16)
    raw = tfds.data_source("cifar10", split="train", download=False)
    assert isinstance(source, sources.TfdsSource)
    assert len(source) == 5 and source.num_classes == 10
    record = source[3]
    assert record["image"].shape == (16, 16, 3) and record["image"].dtype == np.uint8
    assert record["label"].dtype == np.int32 and 0 <= record["label"] < 10
    np.testing.assert_array_equal(record["image"], sources.to_canvas(raw[3]["image"], 16))
    assert record["label"] == raw[3]["label"]

    mnist = sources.get_source("tfds:mnist:test", "train", image_size=28)
    image = mnist[0]["image"]
    assert image.shape == (28, 28, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """A three-class TFDS dataset prepared in both file formats (no network)."""
  import tensorflow_datasets as tfds

  class SslJaxTinyShapes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(6)}

    def _generate_examples(self, count):
      for i in range(count):
        yield i, {"image": np.full((8 + i, 12, 3), 20 * i, np.uint8), "label": i % 3}

  dirs = {}
  for file_format in ("array_record", "tfrecord"):
    dirs[file_format] = str(tmp_path_factory.mktemp(file_format))
    SslJaxTinyShapes(data_dir=dirs[file_format], file_format=file_format).download_and_prepare()
  return dirs


def _expected_tiny(image_size):
  return collections.Counter(
      (sources.to_canvas(np.full((8 + i, 12, 3), 20 * i, np.uint8), image_size).tobytes(), i % 3)
      for i in range(6))


def test_tfds_array_record_is_random_access(tiny_tfds):
  source = sources.get_source("tfds:ssl_jax_tiny_shapes", "train", image_size=8,
                              data_dir=tiny_tfds["array_record"])
  assert isinstance(source, sources.TfdsSource)
  assert len(source) == 6 and source.num_classes == 3
  assert _multiset(source) == _expected_tiny(8)
  half = sources.get_source("tfds:ssl_jax_tiny_shapes:train[:50%]", "test", image_size=8,
                            data_dir=tiny_tfds["array_record"])
  assert len(half) == 3


def test_tfds_tfrecord_falls_back_to_memory(tiny_tfds, monkeypatch):
  source = sources.get_source("tfds:ssl_jax_tiny_shapes", "train", image_size=8,
                              data_dir=tiny_tfds["tfrecord"])
  assert isinstance(source, sources.ArraySource)
  assert len(source) == 6 and source.num_classes == 3
  assert _multiset(source) == _expected_tiny(8)
  monkeypatch.setattr(sources, "MAX_IN_MEMORY_BYTES", 100)
  with pytest.raises(ValueError, match="--file_format=array_record"):
    sources.get_source("tfds:ssl_jax_tiny_shapes", "train", image_size=8,
                       data_dir=tiny_tfds["tfrecord"])


def test_tfds_errors(tmp_path, tiny_tfds):
  tiny_dirs = tiny_tfds  # Also registers the builder.
  with pytest.raises(FileNotFoundError, match="tfds build ssl_jax_tiny_shapes"):
    sources.get_source("tfds:ssl_jax_tiny_shapes", "train", image_size=8, data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="no dataset named 'no_such_dataset_xyz'"):
    sources.get_source("tfds:no_such_dataset_xyz", "train", image_size=8, data_dir=str(tmp_path))
  # A registered dataset never prepared under the default data_dir (tfds raises a KeyError on
  # its empty splits there): the same one-line error, not the KeyError.
  with pytest.raises(sources.DataNotFoundError, match="tfds build cifar10"):
    sources.get_source("tfds:cifar10", "train", image_size=8, data_dir=str(tmp_path / "none"))
  for data_dir in (tiny_dirs["array_record"], tiny_dirs["tfrecord"]):
    with pytest.raises(sources.DataError, match=r"validation.*\['train'\]"):
      sources.get_source("tfds:ssl_jax_tiny_shapes:validation", "train", image_size=8,
                         data_dir=data_dir)


# ----------------------------------------------------------------------------- get_source


def test_get_source_rejects_bad_specs():
  with pytest.raises(ValueError, match="Unknown data spec 'cifar'.*npz:PATH"):
    sources.get_source("cifar", "train", image_size=8)
  with pytest.raises(ValueError, match="needs a value after 'npz:'"):
    sources.get_source("npz:", "train", image_size=8)
  with pytest.raises(ValueError, match="image_size must be a positive int"):
    sources.get_source("digits", "train", image_size=0)
