"""Power sensors on fake sysfs trees and recorded pmset/ioreg outputs, faults included."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import pytest

from mirador.energy.sensors import (
    PowerSources,
    RaplSample,
    parse_forced_power,
    parse_ioreg_draw,
    parse_pmset,
    rapl_joules,
    read_power_state,
    read_rapl,
    read_sysfs_power,
)
from mirador.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "energy"
SYSFS = FIXTURES / "sysfs"
MACOS = FIXTURES / "macos"


@pytest.fixture(autouse=True)
def no_forced_power(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIRADOR_POWER", raising=False)
    monkeypatch.delenv("MIRADOR_SYSFS_ROOT", raising=False)


def make_battery(root: Path, files: dict[str, str], name: str = "BAT0") -> Path:
    folder = root / "class" / "power_supply" / name
    folder.mkdir(parents=True)
    for key, value in {"type": "Battery", **files}.items():
        (folder / key).write_text(value + "\n")
    return root


# -- Linux sysfs -----------------------------------------------------------------------------------


def test_discharging_laptop_at_15_percent():
    state = read_sysfs_power(SYSFS / "laptop-battery-15")
    assert not state.plugged and state.has_battery
    assert state.battery_percent == 15
    assert state.draw_w == pytest.approx(9.876)
    assert state.seconds_left == pytest.approx(7.866 / 9.876 * 3600)
    assert state.notes == ()  # the mouse battery (scope Device) was ignored, not misread
    assert state.describe() == "on battery, battery 15%, drawing 9.9 W, 0:47 left"


def test_plugged_laptop_reports_no_draw_even_while_charging():
    state = read_sysfs_power(SYSFS / "laptop-plugged-15")
    assert state.plugged and state.battery_percent == 15
    assert state.draw_w is None  # power_now is the charging power here, not what the machine uses
    assert state.seconds_left is None


def test_current_times_voltage_when_the_driver_has_no_power_now():
    state = read_sysfs_power(SYSFS / "laptop-charge-64")
    assert not state.plugged  # the USB-C supply is offline
    assert state.draw_w == pytest.approx(0.748 * 15.712)
    assert state.seconds_left == pytest.approx(2.995 * 15.712 / (0.748 * 15.712) * 3600)


def test_a_desktop_with_no_battery_is_plugged_in():
    state = read_sysfs_power(SYSFS / "desktop-rapl")
    assert state.plugged and not state.has_battery
    assert state.describe().startswith("plugged in (no battery")


def test_no_sysfs_at_all_is_a_desktop(tmp_path):
    state = read_sysfs_power(tmp_path / "nothing-here")
    assert state.plugged and not state.has_battery


def test_missing_files_leave_values_unknown(tmp_path):
    state = read_sysfs_power(make_battery(tmp_path, {}))
    assert state.has_battery and state.plugged  # no status, no charger: full power, and a note says why
    assert state.battery_percent is None and state.draw_w is None
    assert any("no status" in note for note in state.notes)


def test_non_numeric_contents_are_noted_not_fatal(tmp_path):
    root = make_battery(tmp_path, {"status": "Discharging", "capacity": "unknown", "power_now": "n/a",
                                   "energy_now": "?"})
    (tmp_path / "class" / "power_supply" / "AC").mkdir()
    (tmp_path / "class" / "power_supply" / "AC" / "type").write_text("Mains\n")
    (tmp_path / "class" / "power_supply" / "AC" / "online").write_text("maybe\n")
    state = read_sysfs_power(root)
    assert not state.plugged  # the charger's "online" is nonsense, so the battery's status decides
    assert state.battery_percent is None and state.draw_w is None and state.seconds_left is None
    text = " ".join(state.notes)
    assert "'unknown'" in text and "'n/a'" in text and "'maybe'" in text


def test_out_of_range_capacity_is_ignored(tmp_path):
    state = read_sysfs_power(make_battery(tmp_path, {"status": "Discharging", "capacity": "250"}))
    assert state.battery_percent is None and any("out of range" in n for n in state.notes)


def test_a_battery_reporting_zero_watts(tmp_path):
    root = make_battery(tmp_path, {"status": "Discharging", "capacity": "40", "power_now": "0",
                                   "energy_now": "20000000"})
    state = read_sysfs_power(root)
    assert state.battery_percent == 40 and not state.plugged
    assert state.draw_w is None and state.seconds_left is None  # no division by zero, no "infinite" time
    assert any("0 W" in note for note in state.notes)


def test_a_full_battery_with_no_charger_listed_is_on_mains(tmp_path):
    state = read_sysfs_power(make_battery(tmp_path, {"status": "Full", "capacity": "100"}))
    assert state.plugged and state.notes == ()


def test_sysfs_root_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MIRADOR_SYSFS_ROOT", str(SYSFS / "laptop-battery-15"))
    state = read_power_state(PowerSources(platform="darwin"))  # a fake tree wins even on macOS
    assert state.battery_percent == 15 and state.source == "sysfs"


# -- RAPL ------------------------------------------------------------------------------------------


def test_rapl_reads_package_domains_only():
    sample = read_rapl(SYSFS / "desktop-rapl")
    assert sample is not None
    assert sample.counters == {"intel-rapl:0": 71234567890, "intel-rapl:1": 12000000000}
    assert sample.ranges["intel-rapl:0"] == 262143328850


def test_rapl_absent_or_unreadable_is_none(tmp_path):
    assert read_rapl(SYSFS / "laptop-battery-15") is None
    domain = tmp_path / "class" / "powercap" / "intel-rapl:0"
    domain.mkdir(parents=True)
    (domain / "energy_uj").write_text("")  # what a root-only file reads as through some sandboxes
    assert read_rapl(tmp_path) is None


def test_rapl_counter_wrap_between_two_reads(tmp_path):
    domain = tmp_path / "class" / "powercap" / "intel-rapl:0"
    domain.mkdir(parents=True)
    (domain / "max_energy_range_uj").write_text("262143328850\n")
    (domain / "energy_uj").write_text("262140000000\n")
    before = read_rapl(tmp_path)
    (domain / "energy_uj").write_text("6671150\n")  # wrapped: 3,328,850 µJ to the top, then 6,671,150
    after = read_rapl(tmp_path)
    assert rapl_joules(before, after) == pytest.approx(10.0)


def test_rapl_plain_delta_and_unknown_range():
    before = RaplSample(0.0, {"intel-rapl:0": 1_000_000, "intel-rapl:1": 500}, {"intel-rapl:0": 0})
    after = RaplSample(1.0, {"intel-rapl:0": 3_500_000, "intel-rapl:1": 100}, {})
    # The second counter went down with no known range: a reset, counted as nothing.
    assert rapl_joules(before, after) == pytest.approx(2.5)


# -- MIRADOR_POWER ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value,plugged,percent", [
    ("plugged", True, None), ("PLUGGED", True, None), ("battery:15", False, 15.0), ("battery", False, None),
    ("battery:7.5%", False, 7.5), (" battery:100 ", False, 100.0),
])
def test_forced_power(value, plugged, percent):
    state = parse_forced_power(value)
    assert state.plugged is plugged and state.battery_percent == percent and state.source == "MIRADOR_POWER"


@pytest.mark.parametrize("value", ["batt", "battery:150", "battery:-1", "battery:abc", "plugged:3", "on"])
def test_forced_power_bad_values_say_what_is_accepted(value):
    with pytest.raises(ConfigError) as caught:
        parse_forced_power(value)
    assert "MIRADOR_POWER" in caught.value.message and "battery:15" in caught.value.hint


def test_forced_power_beats_every_sensor(monkeypatch):
    monkeypatch.setenv("MIRADOR_POWER", "plugged")
    assert read_power_state(PowerSources(sysfs_root=SYSFS / "laptop-battery-15")).plugged


# -- macOS: recorded pmset and ioreg outputs -----------------------------------------------------------


def read(name: str) -> str:
    return (MACOS / name).read_text()


def test_pmset_on_battery():
    state = parse_pmset(read("pmset_battery_15.txt"))
    assert not state.plugged and state.battery_percent == 15 and state.seconds_left == 52 * 60


def test_pmset_charging_has_no_time_left_to_empty():
    state = parse_pmset(read("pmset_charging_15.txt"))
    assert state.plugged and state.battery_percent == 15 and state.seconds_left is None


def test_pmset_other_lines():
    assert parse_pmset(read("pmset_ac_not_charging.txt")).plugged
    no_estimate = parse_pmset(read("pmset_no_estimate.txt"))
    assert not no_estimate.plugged and no_estimate.battery_percent == 64 and no_estimate.seconds_left is None
    desktop = parse_pmset(read("pmset_desktop.txt"))
    assert desktop.plugged and not desktop.has_battery
    garbage = parse_pmset("pmset: command failed\n")
    assert garbage.plugged and garbage.notes


def test_ioreg_draw_decodes_negative_amperage():
    # InstantAmperage 18446744073709550771 is -845 mA; at 11.398 V that is 9.63 W.
    assert parse_ioreg_draw(read("ioreg_battery_15.txt")) == pytest.approx(0.845 * 11.398)
    assert parse_ioreg_draw(read("ioreg_charging_15.txt")) == pytest.approx(2.145 * 12.204)
    assert parse_ioreg_draw("+-o AppleSmartBattery\n") is None


def test_macos_reads_pmset_then_ioreg():
    calls = []

    def run(argv: list[str]) -> str | None:
        calls.append(argv[0])
        return read("pmset_battery_15.txt") if argv[0] == "pmset" else read("ioreg_battery_15.txt")

    state = read_power_state(PowerSources(platform="darwin", run=run))
    assert calls == ["pmset", "ioreg"]
    assert not state.plugged and state.battery_percent == 15
    assert state.draw_w == pytest.approx(9.63, abs=0.01) and state.source == "pmset+ioreg"


def test_macos_plugged_in_skips_ioreg():
    calls = []

    def run(argv: list[str]) -> str | None:
        calls.append(argv[0])
        return read("pmset_charging_15.txt")

    assert read_power_state(PowerSources(platform="darwin", run=run)).plugged
    assert calls == ["pmset"]


# -- elsewhere: psutil -----------------------------------------------------------------------------

Battery = namedtuple("Battery", "percent secsleft power_plugged")


def test_psutil_elsewhere():
    state = read_power_state(PowerSources(platform="win32", psutil_battery=lambda: Battery(42.0, 3600, False)))
    assert not state.plugged and state.battery_percent == 42 and state.seconds_left == 3600
    unlimited = read_power_state(PowerSources(platform="win32", psutil_battery=lambda: Battery(90.0, -2, True)))
    assert unlimited.plugged and unlimited.seconds_left is None
    unknown = read_power_state(PowerSources(platform="win32", psutil_battery=lambda: Battery(50.0, -1, None)))
    assert unknown.plugged and unknown.notes
    assert read_power_state(PowerSources(platform="win32", psutil_battery=lambda: None)).plugged
