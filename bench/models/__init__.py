"""Models that corral's parity tests and engine benchmarks export (see zoo.py)."""
