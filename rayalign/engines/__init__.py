"""Generation engines behind one interface (``base.GenerationEngine``): vLLM and the HF fallback.
Shared by RL rollout workers, serving, batch inference and the judge."""
