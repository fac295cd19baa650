"""The front door: a run's closing lines put its k-NN next to the untrained encoder's and raw
pixels', and `python -m ssl_jax.train --list` names every config with its presets."""

import pathlib
import re
import sys

import pytest

from ssl_jax import catalog, config_lib, summary, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_closing_lines():
  lines = summary.closing_lines(0.717, {"random": 0.59, "raw": 0.975}, "W")
  assert lines == [
      "k-NN top-1, same split: trained encoder 71.7% | same encoder untrained 59.0% | "
      "raw pixels 97.5%",
      "Next: python -m ssl_jax.evaluate --workdir W --protocols knn,linear,fewshot",
      "      python -m ssl_jax.export --workdir W --format timm"]


def test_a_run_without_knn_still_says_what_to_run_next(capsys):
  summary.print_closing_lines({"train/loss": 1.0}, "W")
  assert capsys.readouterr().out.splitlines() == summary.next_lines("W")
  assert summary.next_lines("W")[1].endswith("python -m ssl_jax.export --workdir W --format timm")


@pytest.mark.slow  # two k-NN evaluations (compiling an encoder init): about a minute on 2 cores
def test_finished_run_prints_the_three_numbers_and_a_preempted_one_nothing(tmp_path, capsys):
  config = config_lib.load_config(f"{REPO}/configs/mae.py:smoke")
  (tmp_path / "config.json").write_text(config_lib.to_json(config))
  summary.print_closing_lines({"eval/knn_top1": 0.5, "preempted_at": 7}, str(tmp_path))
  assert capsys.readouterr().out == ""
  summary.print_closing_lines({"eval/knn_top1": 0.5}, str(tmp_path))
  first = capsys.readouterr().out.splitlines()[0]
  match = re.fullmatch(r"k-NN top-1, same split: trained encoder 50\.0% \| same encoder "
                       r"untrained (\d+\.\d)% \| raw pixels (\d+\.\d)%", first)
  assert match, first
  untrained, raw = (float(x) for x in match.groups())
  assert raw > 80.0, raw                 # 8x8 digits: raw pixels are a strong k-NN baseline
  assert 10.0 < untrained < raw          # an untrained ViT is above chance, below raw pixels
  assert (tmp_path / "eval" / "random.json").is_file()
  assert (tmp_path / "eval" / "raw.json").is_file()


def test_list_names_every_config_with_its_presets(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["ssl_jax.train", "--list"])
  train.run()
  listing = capsys.readouterr().out
  assert listing == catalog.describe() + "\n"
  for path in sorted((REPO / "configs").glob("*.py")):
    if path.name != "common.py":
      assert f"configs/{path.name}" in listing
  assert "presets: smoke, digits, cifar10, imagenet, vit_b16, vit_l16, vit_h14, cpu" in listing
  assert "finetune_mae, linear_mae, linear_dino" in listing
