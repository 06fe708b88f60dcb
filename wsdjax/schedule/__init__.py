"""Learning-rate schedules and the branch plan: the named schedules as phases, jit-safe
Optax schedules (`builders`), and which segments a run trains, where branches fork and
what is saved (`plan`). Knows nothing of the trainer or checkpoints."""
