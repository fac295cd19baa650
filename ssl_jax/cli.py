"""Console scripts (pyproject.toml [project.scripts]): each is its `python -m ssl_jax.X` form.

    ssl-jax-train == python -m ssl_jax.train, ssl-jax-evaluate, ssl-jax-export, ssl-jax-viz,
    ssl-jax-report, ssl-jax-label likewise.

Modules are imported when their command runs, so one command does not pay for the others.
"""


def train() -> None:
  from ssl_jax import train as module
  module.run()


def evaluate() -> None:
  from ssl_jax import evaluate as module
  module.run()


def export() -> None:
  from ssl_jax import export as module
  module.run()


def viz() -> None:
  from ssl_jax import viz as module
  module.main()


def report() -> None:
  from ssl_jax import report as module
  module.main()  # Returns the table for library callers; a script's exit status stays 0.


def label() -> None:
  from ssl_jax import label as module
  module.run()
