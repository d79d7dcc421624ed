"""Reward functions for RL: built-ins (``builtin.py``) and the registry resolving names (``registry.py``)."""
