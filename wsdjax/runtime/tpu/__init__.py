"""TPU slices and ahead-of-time compilation for them on any host (libtpu, no TPU)."""
