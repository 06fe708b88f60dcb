"""Training: the train state and optimizer (`state`), the jitted steps (`steps`), the loop
that runs a plan (`trainer`) and what it runs besides training (`hooks`), where a resumed
run stands (`resume`), EMA shadows (`ema`), metrics and logs (`metrics`), live decay
requests (`live_requests`), merged branches (`merges`), branches made beside a run
(`branching`: decays after the fact, merges, the live-request client) and the benchmark
of the trainer's pieces (`benchmark`)."""
