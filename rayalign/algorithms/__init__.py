"""Pure-torch training math: losses, advantages, KL estimators. Nothing here imports ray."""
