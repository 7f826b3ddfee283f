"""Routing: the capability matrix (matrix.py), query analysis (classify.py), the planner (planner.py).

`live.py` is what `mirador ask` uses: a quick plan for stage 1 at once, a
refined plan for the later stages in parallel. Nothing here imports numpy at
module level; the embedding path (classify_embed.py) loads it when it runs.
"""
