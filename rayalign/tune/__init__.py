"""Hyperparameter sweeps on Ray Tune: ``rayalign tune -c sweep.yaml`` or ``rayalign.tune.run(cfg)``.

``space`` checks a sweep before anything starts (pure); ``trial`` is what one Tune trial runs (a recipe's
own driver, reporting to Tune); ``sweep`` drives Ray Tune and writes the results.
"""


def run(cfg, echo=print, resume: bool = False):
    """Run the sweep of ``cfg`` (a recipe with a ``tune:`` section); returns the sweep's results."""
    from rayalign.tune.sweep import run as run_sweep

    return run_sweep(cfg, echo=echo, resume=resume)
