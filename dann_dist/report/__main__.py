"""python -m dann_dist.report: see the package docstring."""

from dann_dist.report.cli import run

if __name__ == "__main__":
    run()
