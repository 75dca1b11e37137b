"""Runs.

The run directory (``RunDir``: its layout, manifest and member specs; ``Run``: the same
with its data and split) and training a pipeline's members into it, one after another, across
drivers sharing the directory (claims), or as Ray tasks.

May import the layers below: core, data, corrupt, members.
"""
