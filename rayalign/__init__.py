"""rayalign: Ray-native LLM post-training.

The Python API for driver scripts starts from a recipe::

    from rayalign import load_config, with_overrides, explain
    cfg = load_config("configs/recipes/tiny/sft.yaml", ["--training.max_steps", "20"])
    cfg = with_overrides(cfg, {"training.learning_rate": 1e-4})

Map: ``config.py`` (typed sections) and ``config_io.py`` (YAML, overrides, explain); ``data/`` (formats,
sources, loading, tasks, tokenize, collate); ``models/`` (loading, tiny-model factory, logprobs);
``algorithms/`` (pure-torch losses); ``batch.py``; ``training/`` (the per-worker loop, objectives,
sharding); ``checkpoint.py``; ``metrics.py``; ``workers/`` (Ray actors); ``recipes/`` (drivers:
``ray_train.run(cfg)`` trains SFT / pretrain / DPO family / KTO on Ray Train); ``cli.py``.
"""

from rayalign.config import RecipeConfig
from rayalign.config_io import explain, load_config, with_overrides

__version__ = "0.1.0"
__all__ = ["RecipeConfig", "explain", "load_config", "with_overrides", "__version__"]
