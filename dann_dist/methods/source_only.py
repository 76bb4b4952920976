"""Source only (the paper's lower bound): DANN's networks and losses with the adaptation
factor held at 0, so the discriminator trains (its accuracy is still reported) but the
extractor never sees its reversed gradient."""

from __future__ import annotations

from dann_dist.methods.dann import Dann


class SourceOnly(Dann):
    name = "source_only"
    adapts = False


METHOD = SourceOnly()
