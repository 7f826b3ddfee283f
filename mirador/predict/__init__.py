"""Predicting which models will be needed, and loading them before they are.

Entry points: `preload.StagePreloader` (stages 2..n of the running ask) and
`predictor.predict` (what this hour usually needs, from history).
"""
