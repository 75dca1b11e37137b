"""Referral.

What decides that an image goes to a person — conformal prediction sets with a
coverage guarantee, the out-of-distribution score, and the referral rule that combines them.

Works on probabilities and features as arrays; may import the layers below (core, data,
corrupt, members, run), never the combiners, serving or the report.
"""
