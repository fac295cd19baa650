"""Runs the frozen-feature evaluators on a method's current params.

Used by the training loop every `eval_every` steps and at the end, and by `ssl_jax.evaluate`.
Features are extracted batch by batch, sharded over the mesh, and stay on device; the k-NN
similarity is computed in chunks of test features, so no host ever holds the whole bank.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssl_jax import parallel, progress
from ssl_jax.data import pipeline, sources, subsets
from ssl_jax.evaluators import fewshot, knn, linear, softnn
from ssl_jax.methods import base


class FeatureEvaluator:
  """Holds the labelled eval splits and a jitted feature function for one method."""

  def __init__(self, method: base.Method, config: ml_collections.ConfigDict, mesh,
               protocols: Sequence[str] = ()):
    self.method = method
    self.config = config
    self.mesh = mesh
    data = config.data
    spec = data.eval_source or data.source
    kwargs = dict(image_size=data.image_size, data_dir=data.data_dir or None)
    self.train_source = sources.get_source(spec, data.eval_train_split, **kwargs)
    self.test_source = sources.get_source(spec, data.eval_test_split, **kwargs)
    num_classes = self.train_source.num_classes
    if not num_classes:
      raise sources.DataError(
          f"The eval source {spec!r} has no labels, so {config.eval.protocols or 'evaluation'} "
          "cannot run. Point data.eval_source at a labelled dataset (npz:PATH with a 'labels' "
          "array, or class subfolders), or train without evaluation: --config.eval.protocols=")
    self.num_classes = int(num_classes)
    self.batch_size = int(config.eval.batch_size)
    parallel.check_batch_size(self.batch_size, mesh, what="eval.batch_size")
    # Checked here, at start-up, not at the first evaluation: a training run would stop there.
    if "knn" in protocols and config.eval.knn_k > len(self.train_source):
      raise sources.DataError(
          f"eval.knn_k={config.eval.knn_k} neighbours, but the {data.eval_train_split!r} split "
          f"of {spec} has only {len(self.train_source)} records; lower --config.eval.knn_k.")
    self._features = jax.jit(parallel.on_mesh(method.features, mesh),
                             out_shardings=parallel.batch_sharding(mesh))
    self._embeddings = jax.jit(parallel.on_mesh(method.embeddings, mesh),
                               out_shardings=parallel.batch_sharding(mesh))

  @property
  def labelled_source(self):
    """The labelled training records (`data.train_subset` of the eval train split, drawn with
    `config.seed` as the training streams draw it): the soft-NN bank."""
    return subsets.apply_subset(self.train_source, self.config.data.train_subset,
                                seed=self.config.seed)

  def _batches(self, source, what: str = "features"):
    """One pass over `source`, logging `what i/n  ETA` (`ssl_jax.progress`)."""
    total = pipeline.eval_batch_count(len(source), self.batch_size, jax.process_count())
    return progress.track(pipeline.make_eval_batches(source, global_batch_size=self.batch_size),
                          f"{what}: batch", total)

  def extract(self, params, state, source,
              what: str = "features") -> tuple[jax.Array, jax.Array, jax.Array]:
    fn = lambda images: self._features(params, state, images)
    return knn.extract_features(fn, self._batches(source, what), mesh=self.mesh)

  def extract_embeddings(self, params, state, source, what: str = "embeddings"):
    fn = lambda images: self._embeddings(params, state, images)
    return knn.extract_features(fn, self._batches(source, what), mesh=self.mesh)

  def fixed_images(self, count: int) -> np.ndarray:
    """The first `count` test images (same every eval, for comparable pictures)."""
    count = min(count, len(self.test_source))
    return np.stack([self.test_source[i]["image"] for i in range(count)])

  def evaluate(self, params, state, protocols: tuple[str, ...]) -> dict[str, float]:
    """Extracts train/test features once and runs each protocol on them.

    Returns scalars named `eval/<protocol>_<metric>` (fractions) and `eval/<protocol>_seconds`;
    'classifier' (methods with `logits`: a trained head) gives `eval/top1` and `eval/top5` on
    the test split.
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
      raise ValueError(f"Unknown eval protocol(s) {sorted(unknown)}; choose from {PROTOCOLS}.")
    results = {}
    if "classifier" in protocols:
      if not hasattr(self.method, "logits"):
        raise ValueError(f"eval protocol 'classifier' needs a method with a trained head "
                         f"(`logits`); {type(self.method).__name__} has none: drop it from "
                         "eval.protocols.")
      # The method's own head on the test split: what semi-supervised methods are judged by.
      start = time.time()
      scores = classifier_accuracy(self.method, params, state, self.test_source,
                                   batch_size=self.batch_size, mesh=self.mesh)
      results.update({f"eval/{name}": value for name, value in scores.items()})
      results["eval/classifier_seconds"] = time.time() - start
      protocols = tuple(p for p in protocols if p != "classifier")
      if not protocols:
        return results
    start = time.time()
    train = self.extract(params, state, self.train_source, "train features")
    test = self.extract(params, state, self.test_source, "test features")
    results["eval/feature_seconds"] = time.time() - start
    masks = dict(train_mask=train[2], test_mask=test[2])
    for protocol in protocols:
      start = time.time()
      if protocol == "knn":
        out = knn.weighted_knn(train[0], train[1], test[0], test[1],
                               num_classes=self.num_classes, k=self.config.eval.knn_k,
                               temperature=self.config.eval.knn_temperature, **masks)
        out = {"top1": out["top1"], "top5": out["top5"]}
      elif protocol == "linear":
        out = linear.linear_probe(train[0], train[1], test[0], test[1],
                                  num_classes=self.num_classes, seed=self.config.seed, **masks)
        out = {"top1": out["top1"], "top5": out["top5"]}
      elif protocol == "softnn":
        bank = self.extract_embeddings(params, state, self.labelled_source, "soft-NN bank")
        queries = self.extract_embeddings(params, state, self.test_source, "test embeddings")
        out = softnn.soft_nn_eval(bank[0], bank[1], queries[0], queries[1],
                                  num_classes=self.num_classes,
                                  temperature=self.config.eval.softnn_temperature,
                                  bank_mask=bank[2], test_mask=queries[2])
      else:  # fewshot
        full = fewshot.fewshot_eval(train[0], train[1], test[0], test[1],
                                    num_classes=self.num_classes, **masks)
        out = {name.replace("/", "_"): value for name, value in full.items()
               if name.count("/") == 1}
      for name, value in out.items():
        results[f"eval/{protocol}_{name}"] = float(value)
      results[f"eval/{protocol}_seconds"] = time.time() - start
    return results


PROTOCOLS = ("knn", "linear", "fewshot", "softnn", "classifier")


@jax.jit
def _count_correct(logits, labels, mask):
  num_top = min(5, logits.shape[-1])
  top = jax.lax.top_k(logits, num_top)[1]
  hits = top == labels[:, None]
  return (jnp.sum(hits[:, 0] & mask), jnp.sum(jnp.any(hits, axis=-1) & mask))


def classifier_accuracy(method, params, state, source, *, batch_size: int,
                        mesh) -> dict[str, float]:
  """Top-1 / top-5 of a method's own classifier (`method.logits`) on every record of `source`."""
  sharding = parallel.batch_sharding(mesh)
  logits_fn = jax.jit(method.logits, out_shardings=sharding)
  top1 = top5 = count = 0
  for batch in pipeline.make_eval_batches(source, global_batch_size=batch_size):
    image, label, mask = (jax.make_array_from_process_local_data(sharding, batch[key])
                          for key in ("image", "label", "mask"))
    correct1, correct5 = _count_correct(logits_fn(params, state, image), label, mask)
    top1, top5 = top1 + int(correct1), top5 + int(correct5)
    count += int(jnp.sum(mask))
  return {"top1": top1 / count, "top5": top5 / count}



def parse_protocols(text: str) -> tuple[str, ...]:
  protocols = tuple(p.strip() for p in text.split(",") if p.strip())
  unknown = [p for p in protocols if p not in PROTOCOLS]
  if unknown:
    raise ValueError(f"Unknown eval protocol(s) {unknown}; choose from {list(PROTOCOLS)}.")
  return protocols
