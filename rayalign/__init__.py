"""rayalign: Ray-native LLM post-training.

The Python API (``api.py``): one function per CLI command, for driver scripts::

    import rayalign
    run = rayalign.train("configs/recipes/tiny/sft.yaml", {"training.max_steps": 20})
    print(run.final_model, run.metrics["loss"])
    with rayalign.serve(model=str(run.final_model)) as server:   # openai.OpenAI(base_url=server.url)
        ...

``train``, ``evaluate``, ``infer``, ``judge``, ``serve`` and ``tune`` (and ``make_data``, ``create_tiny_model``) take a YAML path or a config object
(``load_config``, ``with_overrides``) and return ``TrainResult``, ``EvalResult``, ``RowsResult``, ``Server``
and ``TuneResult``; failures raise ``rayalign.errors`` exceptions.

Map: ``config.py`` (typed sections) and ``config_io.py`` (YAML, overrides, explain); ``data/`` (formats,
sources, loading, tasks, tokenize, collate); ``models/`` (loading, tiny-model factory, logprobs);
``algorithms/`` (pure-torch losses); ``batch.py``; ``training/`` (the per-worker loop, objectives,
sharding); ``checkpoint.py``; ``metrics.py``; ``workers/`` (Ray actors); ``recipes/`` (drivers:
``ray_train.run(cfg)`` trains SFT / pretrain / DPO family / KTO on Ray Train); ``cli.py``.
"""

# The packages named like the API's functions load first (their __init__ files are light): a package
# imported later would rebind ``rayalign.<name>`` to itself, hiding the function.
import rayalign.evaluate  # noqa: F401
import rayalign.judge  # noqa: F401
import rayalign.serve  # noqa: F401
import rayalign.tune  # noqa: F401
from rayalign.api import (EvalResult, RowsResult, Server, TrainResult, TuneResult, create_tiny_model, evaluate,
                          infer, judge, make_data, serve, train, tune)
from rayalign.config import EvalConfig, JudgeConfig, RecipeConfig
from rayalign.config_io import explain, load_config, with_overrides
from rayalign.errors import ConfigError, DataError, Interrupted, RunError, UserError

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "infer", "judge", "serve", "tune", "make_data", "create_tiny_model",
           "TrainResult", "EvalResult", "RowsResult", "Server", "TuneResult",
           "RecipeConfig", "EvalConfig", "JudgeConfig", "load_config", "with_overrides", "explain",
           "UserError", "ConfigError", "DataError", "RunError", "Interrupted", "__version__"]
