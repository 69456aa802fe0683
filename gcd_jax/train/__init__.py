"""Training: mesh and sharding rules, the jitted train step, Orbax checkpoints, metrics, the trainer loop."""
