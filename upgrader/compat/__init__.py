"""Compatibility maths, numpy only: retrieval metrics, the matrix with AC/AM, the formal check, the mixed-gallery estimate and the gate's verdicts."""
