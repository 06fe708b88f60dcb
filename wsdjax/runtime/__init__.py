"""What concerns the process and the machine rather than the model: the commands' shared
plumbing and its one table of errors (`cli`, `errors`), the mesh and its sharding rules
(`sharding`), starting and stopping a multi-process job (`distributed`, `signals`), the
fault injection the resume tests drive (`faults`), files and command outputs (`files`,
`outputs`), glibc's huge pages (`hugepages`) and Cloud TPU slices (`tpu/`)."""
