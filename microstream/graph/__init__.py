"""The job as graphs: the logical graph the `Pipeline` API builds (`logical`) and the physical plan of tasks,
partitioned edges and virtual nodes (`physical`)."""
