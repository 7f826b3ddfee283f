"""Confidence-weighted streaming: events, the chain executor, renderers."""
