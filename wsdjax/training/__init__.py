"""Training: the train state and optimizer (`state`), the jitted steps (`steps`), the loop
that runs a plan (`trainer`), where a resumed run stands (`resume`), EMA shadows (`ema`),
metrics and logs (`metrics`), live decay requests (`live_requests`) and merged branches
(`merges`)."""
