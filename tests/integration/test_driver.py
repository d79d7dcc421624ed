"""Issue 22: ``examples/driver.py``, a driver script on the public API alone (SFT -> DPO -> evaluate -> serve ->
one request through the ``openai`` client -> stop), run inside this test's own Ray: every call joins the
``ray.init()`` already made instead of starting another, and the served app is gone after the ``with`` block.
(As a Ray job on a head: ``test_jobs.py``.)"""

import importlib.util
from pathlib import Path

from safetensors.torch import load_file

from tests.integration.conftest import free_port

DRIVER = Path(__file__).resolve().parents[2] / "examples" / "driver.py"


def test_the_driver_script_chains_every_stage_on_the_callers_ray(ray_local, tmp_path, capsys):
    from ray import serve

    spec = importlib.util.spec_from_file_location("driver", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    node = ray_local.get_runtime_context().get_node_id()
    try:
        out = driver.main(["--out", str(tmp_path / "run"), "--quick", "--port", str(free_port())])
        assert ray_local.get_runtime_context().get_node_id() == node  # the caller's Ray, not a new one
        for stage in ("sft", "dpo"):
            run = out[stage]
            assert run.final_model == tmp_path / "run" / stage / "final"
            assert load_file(run.final_model / "model.safetensors")  # a plain HF directory that loads
            assert run.metrics["step"] == 4 and run.metrics["loss"] > 0 and len(run.history) >= 1
            assert 0 <= out["accuracy"][stage]["accuracy"] <= 1 and out["accuracy"][stage]["n"] == 8
        assert isinstance(out["answer"], str)
        assert "rayalign" not in serve.status().applications  # stopped by the with block
        printed = capsys.readouterr().out
        assert "held-out accuracy" in printed and "best constant answer" in printed and out["url"] in printed
    finally:
        serve.shutdown()
