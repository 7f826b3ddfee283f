"""Power sensors: is the machine plugged in, how full is the battery, what does it draw.

Linux reads sysfs directly (the same files psutil reads, plus the draw psutil
leaves out) under a root that MIRADOR_SYSFS_ROOT can move, so tests run on fake
trees. macOS parses `pmset -g batt` and `ioreg -rw0 -c AppleSmartBattery`;
other systems ask psutil, imported only then (it costs ~20 ms of start-up).
MIRADOR_POWER=plugged or battery:15 overrides every sensor.

A sensor that is missing, unreadable or talks nonsense is normal (desktops have
no battery, RAPL is often root-only): it leaves a value unknown and a note why,
never an error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mirador.errors import ConfigError

POWER_ENV = "MIRADOR_POWER"
SYSFS_ENV = "MIRADOR_SYSFS_ROOT"
# Battery statuses (sysfs) that mean the charger is connected even where no Mains supply is listed.
_ON_MAINS_STATUSES = {"charging", "full", "not charging"}


@dataclass(frozen=True)
class PowerState:
    """What the machine runs on now."""

    plugged: bool
    battery_percent: float | None = None  # None: no battery, or it did not say
    seconds_left: float | None = None  # till empty (on battery) as the system estimates it
    draw_w: float | None = None  # what the battery delivers now; None when unknown or charging
    has_battery: bool = False
    source: str = "none"  # where it came from: sysfs, pmset, psutil, MIRADOR_POWER, none
    notes: tuple[str, ...] = ()  # why a value is unknown

    def describe(self) -> str:
        if not self.has_battery:
            return "plugged in (no battery: a desktop or server)" if self.plugged else "on battery"
        parts = ["plugged in" if self.plugged else "on battery"]
        if self.battery_percent is not None:
            parts.append(f"battery {self.battery_percent:.0f}%")
        if self.draw_w is not None:
            parts.append(f"drawing {self.draw_w:.1f} W")
        if self.seconds_left is not None and not self.plugged:
            minutes = int(self.seconds_left // 60)
            parts.append(f"{minutes // 60}:{minutes % 60:02d} left")
        return ", ".join(parts)


@dataclass
class PowerSources:
    """Where readings come from; tests replace any of them."""

    sysfs_root: Path | None = None  # None: $MIRADOR_SYSFS_ROOT, else /sys
    platform: str = field(default_factory=lambda: sys.platform)
    run: Callable[[list[str]], str | None] | None = None  # runs pmset/ioreg; None: subprocess
    psutil_battery: Callable[[], object] | None = None  # None: psutil.sensors_battery

    def root(self) -> Path:
        if self.sysfs_root is not None:
            return self.sysfs_root
        return Path(os.environ.get(SYSFS_ENV) or "/sys")


def read_power_state(sources: PowerSources | None = None) -> PowerState:
    """The power state now: MIRADOR_POWER if set, else the platform's sensors."""
    forced = os.environ.get(POWER_ENV)
    if forced is not None and forced.strip():
        return parse_forced_power(forced)
    sources = sources or PowerSources()
    if sources.platform == "darwin" and sources.sysfs_root is None and not os.environ.get(SYSFS_ENV):
        return _read_macos(sources)
    if sources.platform.startswith("linux") or sources.sysfs_root is not None or os.environ.get(SYSFS_ENV):
        return read_sysfs_power(sources.root())
    return _read_psutil(sources)


def parse_forced_power(value: str) -> PowerState:
    """MIRADOR_POWER: `plugged`, `battery` or `battery:PERCENT`."""
    text = value.strip().lower()
    if text in ("plugged", "ac", "mains"):
        return PowerState(plugged=True, has_battery=True, source=POWER_ENV)
    match = re.fullmatch(r"battery(?::(\d+(?:\.\d+)?)%?)?", text)
    if match:
        percent = float(match.group(1)) if match.group(1) else None
        if percent is None or 0 <= percent <= 100:
            return PowerState(plugged=False, battery_percent=percent, has_battery=True, source=POWER_ENV)
    raise ConfigError(
        f"{POWER_ENV}={value!r} is not a power state",
        hint=f"use {POWER_ENV}=plugged or {POWER_ENV}=battery:15 (a percent from 0 to 100), or unset it")


# -- Linux sysfs -----------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:  # missing, a permission, a driver that fails the read: all mean "unknown"
        return None


def _read_number(path: Path, notes: list[str]) -> float | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        notes.append(f"{path.parent.name}/{path.name} holds {text[:20]!r}, not a number")
        return None


def read_sysfs_power(root: Path) -> PowerState:
    supplies = root / "class" / "power_supply"
    notes: list[str] = []
    try:
        entries = sorted(p for p in supplies.iterdir() if p.is_dir())
    except OSError:
        entries = []
    batteries: list[Path] = []
    mains_online: list[bool] = []
    for entry in entries:
        kind = (_read_text(entry / "type") or "").lower()
        if kind == "battery":
            # scope=Device: a mouse or headset battery, not the one that powers this machine.
            if (_read_text(entry / "scope") or "").lower() == "device":
                continue
            if _read_text(entry / "present") == "0":
                continue
            batteries.append(entry)
        elif kind in ("mains", "usb", "usb_c", "usb_pd"):
            online = _read_number(entry / "online", notes)
            if online is not None:
                mains_online.append(online >= 1)
    if not batteries:
        return PowerState(plugged=True, source="sysfs")
    bat = batteries[0]
    status = (_read_text(bat / "status") or "").lower()
    if mains_online:
        plugged = any(mains_online)
    elif status == "discharging":
        plugged = False
    else:
        plugged = status in _ON_MAINS_STATUSES
        if not plugged:  # no charger listed and no status: full power rather than a wrong survival mode
            notes.append(f"{bat.name} gives no status and no charger is listed: taken as plugged in")
            plugged = True
    percent = _read_number(bat / "capacity", notes)
    if percent is not None and not 0 <= percent <= 100:
        notes.append(f"{bat.name}/capacity says {percent:g}%, out of range")
        percent = None
    draw = None if plugged else _battery_draw_w(bat, notes)  # plugged, power_now is the charging power
    seconds_left = None
    if draw:
        energy_wh = _battery_energy_wh(bat, notes)
        if energy_wh is not None:
            seconds_left = energy_wh / draw * 3600
    return PowerState(plugged=plugged, battery_percent=percent, seconds_left=seconds_left,
                      draw_w=draw, has_battery=True, source="sysfs", notes=tuple(notes))


def _battery_draw_w(bat: Path, notes: list[str]) -> float | None:
    """power_now (µW), or current_now (µA) × voltage_now (µV). Zero means the driver does not know."""
    power_uw = _read_number(bat / "power_now", notes)
    if power_uw is None:
        current_ua = _read_number(bat / "current_now", notes)
        voltage_uv = _read_number(bat / "voltage_now", notes)
        if current_ua is not None and voltage_uv is not None:
            power_uw = current_ua * voltage_uv / 1e6
    if power_uw is None:
        notes.append(f"{bat.name} reports no power_now or current_now × voltage_now")
        return None
    watts = abs(power_uw) / 1e6  # some drivers sign the discharge current
    if watts == 0:
        notes.append(f"{bat.name} reports a draw of 0 W (its driver does not measure it)")
        return None
    return watts


def _battery_energy_wh(bat: Path, notes: list[str]) -> float | None:
    energy_uwh = _read_number(bat / "energy_now", notes)
    if energy_uwh is not None:
        return energy_uwh / 1e6
    charge_uah = _read_number(bat / "charge_now", notes)
    voltage_uv = _read_number(bat / "voltage_now", notes)
    if charge_uah is not None and voltage_uv is not None:
        return charge_uah * voltage_uv / 1e12
    return None


# -- RAPL package energy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplSample:
    """Package energy counters (µJ) of every RAPL package domain, and where each wraps."""

    at: float  # time.monotonic()
    counters: dict[str, int]
    ranges: dict[str, int]


def read_rapl(root: Path | None = None) -> RaplSample | None:
    """None when RAPL is absent or root-only (normal: since 2020 most kernels restrict it)."""
    base = (root or PowerSources().root()) / "class" / "powercap"
    counters: dict[str, int] = {}
    ranges: dict[str, int] = {}
    try:
        # Package domains only (intel-rapl:0); sub-domains (intel-rapl:0:0, cores) are inside them.
        domains = sorted(p for p in base.iterdir() if re.fullmatch(r"intel-rapl:\d+", p.name))
    except OSError:
        return None
    for domain in domains:
        energy = _read_text(domain / "energy_uj")
        limit = _read_text(domain / "max_energy_range_uj")
        if energy is None or not energy.isdigit():
            continue
        counters[domain.name] = int(energy)
        ranges[domain.name] = int(limit) if limit and limit.isdigit() else 0
    if not counters:
        return None
    return RaplSample(time.monotonic(), counters, ranges)


def rapl_joules(before: RaplSample, after: RaplSample) -> float:
    """Energy between two samples; a counter that went down wrapped at its max_energy_range_uj."""
    total_uj = 0
    for name, start in before.counters.items():
        end = after.counters.get(name)
        if end is None:
            continue
        if end >= start:
            total_uj += end - start
        elif before.ranges.get(name):
            total_uj += before.ranges[name] - start + end
        # A decrease with no known range cannot be told apart from a reset: count nothing.
    return total_uj / 1e6


# -- macOS -----------------------------------------------------------------------------------------

_PMSET_LINE = re.compile(r"(\d+)%;\s*([^;]+);\s*(.*)")


def parse_pmset(text: str) -> PowerState:
    """`pmset -g batt`: the source line and, on a laptop, the InternalBattery line."""
    notes: list[str] = []
    source_match = re.search(r"drawing from '([^']+)'", text)
    source = source_match.group(1) if source_match else ""
    battery_line = next((line for line in text.splitlines() if "InternalBattery" in line), None)
    if battery_line is None:
        if not source_match:
            notes.append("pmset printed nothing recognisable")
        return PowerState(plugged=source != "Battery Power", source="pmset", notes=tuple(notes))
    match = _PMSET_LINE.search(battery_line)
    if match is None:
        return PowerState(plugged=source != "Battery Power", has_battery=True, source="pmset",
                          notes=(f"cannot read pmset's battery line {battery_line.strip()!r}",))
    percent = float(match.group(1))
    status = match.group(2).strip().lower()
    plugged = source == "AC Power" if source else status != "discharging"
    seconds_left = None
    remaining = re.match(r"(\d+):(\d\d) remaining", match.group(3).strip())
    if remaining and not plugged:
        seconds_left = (int(remaining.group(1)) * 60 + int(remaining.group(2))) * 60.0
        if seconds_left == 0:
            seconds_left = None  # "0:00 remaining" while discharging means "still estimating"
    return PowerState(plugged=plugged, battery_percent=percent, seconds_left=seconds_left, has_battery=True,
                      source="pmset", notes=tuple(notes))


def parse_ioreg_draw(text: str) -> float | None:
    """The battery's draw in watts from `ioreg -rw0 -c AppleSmartBattery`: Voltage (mV) × Amperage (mA).

    Amperage is a signed 64-bit number that ioreg prints unsigned: -1000 mA shows as
    18446744073709550616. InstantAmperage is preferred where present: Amperage is a running average.
    """
    values: dict[str, int] = {}
    for key in ("Voltage", "InstantAmperage", "Amperage"):
        match = re.search(rf'^\s*"{key}" = (\d+)\s*$', text, re.MULTILINE)
        if match:
            number = int(match.group(1))
            values[key] = number - (1 << 64) if number >= 1 << 63 else number
    amperage = values.get("InstantAmperage") or values.get("Amperage")
    voltage = values.get("Voltage")
    if not amperage or not voltage:
        return None
    return abs(amperage) * voltage / 1e6


def _run_command(argv: list[str]) -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _read_macos(sources: PowerSources) -> PowerState:
    run = sources.run or _run_command
    text = run(["pmset", "-g", "batt"])
    if text is None:
        return _read_psutil(sources)
    state = parse_pmset(text)
    if not state.has_battery or state.plugged:
        return state
    ioreg = run(["ioreg", "-rw0", "-c", "AppleSmartBattery"])
    draw = parse_ioreg_draw(ioreg) if ioreg else None
    notes = state.notes if draw else (*state.notes, "ioreg gave no battery voltage and amperage")
    return PowerState(plugged=state.plugged, battery_percent=state.battery_percent,
                      seconds_left=state.seconds_left, draw_w=draw, has_battery=True, source="pmset+ioreg",
                      notes=notes)


# -- elsewhere: psutil -----------------------------------------------------------------------------


def _read_psutil(sources: PowerSources) -> PowerState:
    reader = sources.psutil_battery
    if reader is None:
        try:
            import psutil
        except ImportError:
            return PowerState(plugged=True, notes=("psutil is not installed: power state unknown",))
        reader = getattr(psutil, "sensors_battery", None)
        if reader is None:
            return PowerState(plugged=True, notes=("psutil cannot read batteries on this system",))
    try:
        battery = reader()
    except (OSError, RuntimeError) as exc:
        return PowerState(plugged=True, source="psutil", notes=(f"psutil: {exc}",))
    if battery is None:
        return PowerState(plugged=True, source="psutil")
    secs = getattr(battery, "secsleft", None)
    seconds_left = float(secs) if isinstance(secs, (int, float)) and secs >= 0 else None  # -1/-2: unknown
    plugged = getattr(battery, "power_plugged", None)
    notes = () if plugged is not None else ("psutil cannot tell whether the charger is connected",)
    plugged = True if plugged is None else bool(plugged)
    return PowerState(plugged=plugged, battery_percent=float(battery.percent),
                      seconds_left=None if plugged else seconds_left, has_battery=True, source="psutil",
                      notes=notes)
