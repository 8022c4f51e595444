"""Helper modules for the peers the benchmark compares lilqueue with (imported by their worker processes)."""
