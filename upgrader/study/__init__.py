"""Upgrade scenarios, the compatibility study and its report, and the demo."""
