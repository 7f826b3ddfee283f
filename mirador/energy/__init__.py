"""Energy-aware model selection: power sensors, a per-model cost model, profiles, and the
quality-per-joule optimizer the planner calls with the constraint of the active profile.

Entry point: `mirador.energy.profiles.energy_constraint()`. Nothing here imports psutil,
httpx or sqlite3 at module level: the profile decision sits on the `ask` path.
"""
