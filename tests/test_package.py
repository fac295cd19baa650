"""pyproject.toml: every subpackage is shipped, every console script resolves, and (slow) a fresh
venv's `pip install .` / `pip install -e .` imports and finds the configs outside the clone."""

import importlib
import os
import pathlib
import shutil
import site
import subprocess
import sys
import time
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_subpackage_is_listed():
  on_disk = {".".join(path.parent.relative_to(REPO).parts)
             for path in (REPO / "ssl_jax").rglob("__init__.py")}
  listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
  assert listed == on_disk | {"ssl_jax.configs"}
  assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"ssl_jax.configs": "configs"}


def test_console_scripts_are_the_module_entry_points():
  scripts = PYPROJECT["project"]["scripts"]
  assert set(scripts) == {"ssl-jax-train", "ssl-jax-evaluate", "ssl-jax-export", "ssl-jax-viz",
                          "ssl-jax-report", "ssl-jax-label"}
  for script, target in scripts.items():
    module_name, function = target.split(":")
    assert callable(getattr(importlib.import_module(module_name), function)), script
    # ssl-jax-X runs what `python -m ssl_jax.X` runs.
    assert function == script.removeprefix("ssl-jax-")


def test_dependencies_start_at_the_pinned_versions():
  """requirements.txt is the tested set: each pin is the lower bound of the package's range
  (core or the extra that needs it)."""
  pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
              if line and not line.startswith("#"))
  project = PYPROJECT["project"]
  ranges = project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                      for r in extra]
  lower_bounds = {}
  for requirement in ranges:
    name, _, rest = requirement.partition(">=")
    lower_bounds.setdefault(name.split("[")[0], rest.split(",")[0])
  assert lower_bounds.keys() >= pins.keys(), sorted(pins.keys() - lower_bounds.keys())
  for name, version in pins.items():
    assert lower_bounds[name] == version, name


def _copy_of_the_clone(destination: pathlib.Path) -> pathlib.Path:
  """The sources alone, so building leaves nothing (build/, *.egg-info) in the clone."""
  ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "workdirs", "build",
                                  "*.egg-info")
  shutil.copytree(REPO, destination, ignore=ignore)
  return destination


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_fresh_venv_install_works_outside_the_clone(tmp_path, editable):
  source = _copy_of_the_clone(tmp_path / "clone")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  # The dependencies come from this interpreter's site-packages (no download); the package
  # itself is built and installed from the copied clone.
  purelib = subprocess.run([str(venv / "bin/python"), "-c",
                            "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
  pathlib.Path(purelib, "_ssl_jax_test_deps.pth").write_text(
      "\n".join(site.getsitepackages()) + "\n")
  start = time.perf_counter()
  subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-build-isolation", *(["-e"] if editable else []), str(source)],
                 check=True)
  print(f"pip install {'-e ' if editable else ''}. took {time.perf_counter() - start:.1f} s")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3")
  probe = ("import ssl_jax, ssl_jax.train, ssl_jax.export\n"
           "from ssl_jax import config_lib\n"
           "config = config_lib.load_config('configs/mae.py:smoke')\n"
           "print(ssl_jax.__file__, config.model.name)\n")
  out = subprocess.run([str(venv / "bin/python"), "-c", probe], cwd=elsewhere, env=env,
                       check=True, capture_output=True, text=True).stdout.split()
  package_file = pathlib.Path(out[0])
  assert package_file.is_relative_to(source if editable else venv), package_file
  assert out[1] == "vit_ti4"
  usage = subprocess.run([str(venv / "bin/ssl-jax-export"), "--workdir", str(elsewhere / "no")],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
  assert usage.returncode == 1 and "export: No checkpoints" in usage.stderr, usage.stderr
