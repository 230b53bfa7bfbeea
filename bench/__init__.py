"""The benchmark (bench/run.py) and its results (bench/results/)."""
