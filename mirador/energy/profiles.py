"""Profiles: what the power state allows, as a constraint the planner takes from outside.

- survival: on battery below `energy_survival_below` percent. Micro models only
  (at most `energy_micro_max_b` billion parameters), one stage, short answers;
  the best of them, since every micro model is cheap.
- balanced: on battery. Best quality per joule, spending at most
  `energy_balanced_budget` (a half) of the energy of the full-power plan: the
  same answer time at half the power.
- performance: plugged in (a machine with no battery always is). Best quality.

`mirador ask --profile` and `mirador energy profile NAME` override the choice;
`auto` (the default) decides from the sensors, which are only read then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mirador.errors import UsageError

if TYPE_CHECKING:
    from mirador.energy.costs import CostModel
    from mirador.energy.models import ModelFacts
    from mirador.energy.sensors import PowerState

PROFILES = ("survival", "balanced", "performance")
PROFILE_CHOICES = ("auto", *PROFILES)
SURVIVAL_MAX_TOKENS = 200  # a short answer: two paragraphs
# Pure quality per joule always picks the smallest model; balanced answers stay useful by never
# falling below this share of the quality the full-power plan would reach.
BALANCED_MIN_QUALITY = 0.8
DEFAULT_SURVIVAL_BELOW = 20.0
DEFAULT_MICRO_MAX_B = 2.0
DEFAULT_BALANCED_BUDGET = 0.5


@dataclass(frozen=True)
class ProfileDecision:
    profile: str
    reason: str  # one line a user can check: "battery 15% and discharging, below 20%"
    chosen_by: str  # "auto", "--profile", or the settings source (config file, $MIRADOR_ENERGY_PROFILE)
    state: PowerState | None = None  # read only when the choice needed it


@dataclass(frozen=True)
class EnergyConstraint:
    """Everything the planner needs to respect a profile, as explicit parameters."""

    profile: str
    reason: str
    objective: str  # "quality" or "quality_per_joule"
    max_params_b: float | None = None  # survival: micro models only
    max_stages: int | None = None  # survival: one stage
    max_tokens_per_stage: int | None = None  # survival: short answers
    energy_budget_fraction: float | None = None  # balanced: share of the full-power plan's energy
    min_quality_fraction: float | None = None  # balanced: share of the full-power plan's quality
    costs: CostModel | None = field(default=None, compare=False, repr=False)

    @property
    def changes_nothing(self) -> bool:
        """Performance leaves the planner's plan as it is: no slots, no optimizer, no cost model."""
        return self.objective == "quality" and self.max_params_b is None and self.max_stages is None

    def allows(self, facts: ModelFacts) -> bool:
        """Whether a model may run under this profile at all; a model of unknown size is not micro."""
        if self.max_params_b is None:
            return True
        return facts.params_b is not None and facts.params_b <= self.max_params_b

    def describe(self) -> str:
        rules = []
        if self.max_params_b is not None:
            rules.append(f"models of at most {self.max_params_b:g}B parameters")
        if self.max_stages is not None:
            rules.append(f"{self.max_stages} stage" + ("s" if self.max_stages != 1 else ""))
        if self.max_tokens_per_stage is not None:
            rules.append(f"at most {self.max_tokens_per_stage} tokens a stage")
        if self.energy_budget_fraction is not None:
            rules.append(f"at most {self.energy_budget_fraction:.0%} of the full-power plan's energy")
        if self.min_quality_fraction is not None:
            rules.append(f"at least {self.min_quality_fraction:.0%} of its quality")
        goal = "best quality per joule" if self.objective == "quality_per_joule" else "best quality"
        return f"{goal}" + (f"; {', '.join(rules)}" if rules else "")


def check_profile(name: str) -> str:
    value = name.strip().lower()
    if value not in PROFILE_CHOICES:
        raise UsageError(f"unknown energy profile '{name}'", hint=f"choose one of: {', '.join(PROFILE_CHOICES)}")
    return value


def decide_profile(override: str | None = None, settings: Any = None,
                   state: PowerState | None = None) -> ProfileDecision:
    """The profile in force: --profile, else the setting, else (auto) the power state."""
    wanted, chosen_by = "auto", "auto"
    if override:
        wanted, chosen_by = check_profile(override), "--profile"
    elif settings is not None and getattr(settings, "energy_profile", "auto") != "auto":
        wanted, chosen_by = settings.energy_profile, settings.sources.get("energy_profile", "config")
    if wanted != "auto":
        return ProfileDecision(wanted, f"set by {chosen_by}", chosen_by, state)
    if state is None:
        from mirador.energy.sensors import read_power_state

        state = read_power_state()
    below = _setting(settings, "energy_survival_below", DEFAULT_SURVIVAL_BELOW)
    if state.plugged:
        why = "no battery: always on mains power" if not state.has_battery else "plugged in"
        return ProfileDecision("performance", why, "auto", state)
    if state.battery_percent is not None and state.battery_percent < below:
        return ProfileDecision("survival", f"on battery at {state.battery_percent:.0f}%, below {below:g}%",
                               "auto", state)
    level = f" at {state.battery_percent:.0f}%" if state.battery_percent is not None else ""
    return ProfileDecision("balanced", f"on battery{level}", "auto", state)


def constraint_for(decision: ProfileDecision, settings: Any = None,
                   costs: CostModel | None = None) -> EnergyConstraint:
    if decision.profile == "survival":
        return EnergyConstraint(
            # Every micro model is cheap: among them, the best answer is worth its few joules.
            "survival", decision.reason, "quality",
            max_params_b=_setting(settings, "energy_micro_max_b", DEFAULT_MICRO_MAX_B),
            max_stages=1, max_tokens_per_stage=SURVIVAL_MAX_TOKENS, costs=costs)
    if decision.profile == "balanced":
        return EnergyConstraint(
            "balanced", decision.reason, "quality_per_joule",
            energy_budget_fraction=_setting(settings, "energy_balanced_budget", DEFAULT_BALANCED_BUDGET),
            min_quality_fraction=BALANCED_MIN_QUALITY, costs=costs)
    return EnergyConstraint("performance", decision.reason, "quality", costs=costs)


def energy_constraint(profile: str | None = None, settings: Any = None,
                      facts: list[ModelFacts] | None = None) -> EnergyConstraint:
    """The entry point for the planner: the constraint of the profile in force, with its cost model.

    Cheap: sysfs reads (or MIRADOR_POWER) and energy.json; no psutil on Linux or macOS, no SQLite.
    The decision is in `constraint.profile` and `constraint.reason`; `facts` may also come later,
    through `constraint.costs.add_facts`.
    """
    decision = decide_profile(profile, settings)
    if decision.profile == "performance":  # the planner's plan stands: no cost model to import or read
        return constraint_for(decision, settings, None)
    from mirador.energy.costs import CostModel

    return constraint_for(decision, settings, CostModel.load(facts, settings))


def _setting(settings: Any, name: str, default: float) -> float:
    value = getattr(settings, name, None) if settings is not None else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
