"""python -m dann_dist.bench: see the package docstring."""

from dann_dist.bench.cli import run

if __name__ == "__main__":
    run()
