"""Device meshes, the logical-axis table, and sequence parallelism."""
