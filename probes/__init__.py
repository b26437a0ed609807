"""Experiments that interrogate a model: probes, CoT-faithfulness tests, the stated-vs-internal report."""
