"""Learning-rate schedules and the branch plan: the named schedules as phases, jit-safe
Optax schedules (`builders`), the one typed description of a schedule, from the config to
Optax, and the owner of its checks (`spec.ScheduleSpec`, `spec.check`), which segments a
run trains, where branches fork and what is saved (`plan`), and how merges weigh main's
saves (`merge_weights`). Knows nothing of the trainer or checkpoints."""
