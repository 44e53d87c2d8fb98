"""hwnas profiler: export every candidate block, measure it on real devices, write LUTs."""
