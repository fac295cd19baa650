"""Params-only export from a checkpoint: orbax and .npz agree with the checkpoint's params."""

import sys

import jax
import numpy as np
import pytest

from ssl_jax import checkpoint as ckpt_lib
from ssl_jax import export


def test_export_round_trips(tmp_path):
  params = {"encoder": {"blocks_0": {"attn": {"qkv": {"kernel": np.arange(12.0).reshape(3, 4),
                                                     "bias": np.ones(4)}}}},
            "decoder": {"mask_token": np.full((1, 1, 2), 0.5)}}
  state = {"step": np.int32(3), "params": params, "opt_state": {}, "method_state": {}}
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(3, state, None, force=True)
  checkpointer.close()
  paths = export.export_checkpoint(str(tmp_path))
  assert paths["step"] == "3"
  npz = np.load(paths["npz"])
  np.testing.assert_array_equal(npz["encoder/blocks_0/attn/qkv/kernel"], np.arange(12.0).reshape(3, 4))
  np.testing.assert_array_equal(npz["decoder/mask_token"], np.full((1, 1, 2), 0.5))
  restored = ckpt_lib.load_exported_params(tmp_path / "export")
  jax.tree.map(np.testing.assert_array_equal, restored, params)


def test_export_without_checkpoints_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    export.export_checkpoint(str(tmp_path / "empty"))


def test_an_out_that_cannot_be_written_is_a_clear_error(tmp_path):
  """A file where the export directory should go is refused by name, not as an errno line."""
  state = {"step": np.int32(1), "params": {"w": np.ones(2)}, "opt_state": {}, "method_state": {}}
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "run"), async_save=False)
  checkpointer.save(1, state, None, force=True)
  checkpointer.close()
  (tmp_path / "taken").write_text("")
  with pytest.raises(export.ExportError, match=r"--out .*taken cannot be written \(.*\); name"):
    export.export_checkpoint(str(tmp_path / "run"), out=str(tmp_path / "taken"))


def test_a_subtree_without_the_timm_format_is_a_usage_error(tmp_path, monkeypatch, capsys):
  """--subtree picks the timm backbone; the params formats write every param, so asking for a
  subtree with them alone would be silently ignored."""
  monkeypatch.setattr(sys, "argv", ["export", f"--workdir={tmp_path}", "--format=npz",
                                    "--subtree=method_state/teacher/encoder"])
  with pytest.raises(SystemExit):
    export.run()
  assert "--subtree selects the backbone of --format timm; --format npz" in capsys.readouterr().err
