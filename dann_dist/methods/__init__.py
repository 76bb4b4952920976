"""Adaptation methods: each module gives a method's networks and its objective for a
batch; `registry` maps the names `--adaptation` takes to those modules."""
