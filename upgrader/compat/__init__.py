"""Compatibility maths, numpy only.

``metrics`` (retrieval accuracy, self-tests), ``matrix`` (the compatibility matrix, AC, AM and the pair
evaluator), ``formal`` (Shen et al.'s definition), ``mixed`` (the mixed-gallery estimate), ``gate`` (its
configuration, rules and the two evaluations) and ``verdict`` (what the gate returns).
"""
