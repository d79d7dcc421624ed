"""The per-worker training machinery (pure torch + torch.distributed, no Ray): sharding, objectives, loop."""
