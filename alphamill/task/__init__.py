"""Tasks: definitions, generators, the task pool and the workers that drain it."""
