"""Compatibility maths, numpy only.

``metrics`` (retrieval accuracy, self-tests), ``matrix`` (the compatibility matrix, AC, AM and the pair
evaluator), ``formal`` (Shen et al.'s definition), ``mixed`` (the mixed-gallery template estimate),
``item_search`` (item-level search on a probe gallery composed like the real one), ``score_calibration``
and ``search_calibration`` (the score maps serving applies across generations: moment fits, and shifts
fitted to the search), ``served`` and ``item_rules`` (the gate's item-level estimate and its rules),
``backfill_plan`` (which items to re-embed first), ``gate`` (its configuration, rules and the two
evaluations) and ``verdict`` (what the gate returns).
"""
