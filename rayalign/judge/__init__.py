"""The LLM judge: built-in judge prompts (``templates.py``), verdict parsers (``parsers.py``), the async
client with retries and a verdict cache (``judge.py``), and where the judge model answers
(``service.py``: a local model deployed on Ray Serve, or any OpenAI-compatible URL)."""
