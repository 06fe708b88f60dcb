"""What concerns the process rather than the model: starting and stopping a multi-process
job (`distributed`), XLA:CPU's huge pages and the CLIs' restart for them (`hugepages`),
and the fault injection the resume tests drive (`faults`)."""
