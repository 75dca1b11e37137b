"""Combiners.

How the members' outputs on the same images become one prediction — the combiner
interface and registry, the voting combiners, temperature scaling, the XGBoost stacker, the
shifted copies of blend, and ``fit-stacker`` (fitting, cross-validating and selecting them, and
calibrating the referral).

May import the layers below: core, data, corrupt, members, run, refer.
"""
