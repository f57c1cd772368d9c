"""Train Steerflow's default model on the generated shapes world (see README.md)."""
