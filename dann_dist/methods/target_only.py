"""Train on target (the paper's upper bound): source only, with the labelled stream
taken from the target domain. It uses target labels, so it is a reference, not an
adaptation method."""

from __future__ import annotations

from dann_dist.methods.source_only import SourceOnly


class TargetOnly(SourceOnly):
    name = "target_only"
    labelled_domain = "target"


METHOD = TargetOnly()
