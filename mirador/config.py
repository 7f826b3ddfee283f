"""Settings and paths.

Paths follow XDG (~/.config/mirador, ~/.local/share/mirador); MIRADOR_HOME moves
both under one folder (tests always set it). Settings come from, in rising order
of precedence: built-in defaults, config.yaml, environment variables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirador.errors import ConfigError

DEFAULT_HOST = "http://127.0.0.1:11434"
_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    data_dir: Path

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.yaml"

    @property
    def history_db(self) -> Path:
        return self.data_dir / "history.db"

    @property
    def pins_file(self) -> Path:
        """Models the user preloaded with their own keep_alive (see runtime.pins)."""
        return self.data_dir / "pins.json"

    def ensure_data_dir(self) -> Path:
        """Create the data dir owner-only; user data never becomes world-readable."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.data_dir


def paths() -> Paths:
    home = os.environ.get("MIRADOR_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(root / "config", root / "data")
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return Paths(config_home / "mirador", data_home / "mirador")


def normalize_host(value: str) -> str:
    """Turn any OLLAMA_HOST spelling (`0.0.0.0`, `:11434`, `host:port`, URL) into a base URL."""
    from urllib.parse import urlsplit

    text = value.strip().rstrip("/")
    parts = urlsplit(text if "://" in text else f"http://{text}")
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"  # a listen-anywhere address: connect over loopback
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or (443 if parts.scheme == "https" and "://" in text else 11434)
    except ValueError:
        raise ValueError(f"'{value}' has an invalid port") from None
    return f"{parts.scheme}://{host}:{port}"


def parse_keep_alive(value: Any) -> int | float | str:
    """A keep_alive as Ollama accepts it: seconds as a number, or a Go duration string."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5m, 1h, -1 (forever) or 0 (unload at once)")
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)  # Ollama rejects the bare string "-1"; send a number
    if re.fullmatch(r"-?\d+\.\d+", text):
        return float(text)
    if _DURATION.match(text):
        return text
    raise ValueError("expected a duration such as 5m, 1h, -1 (forever) or 0 (unload at once)")


def _as_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _as_model_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [part for part in value.split(",")]
    if not isinstance(value, list) or not value:
        raise ValueError("expected a list of model names, e.g. [llama3.2:1b, llama3.1:8b]")
    models = [str(item).strip() for item in value]
    if any(not model for model in models):
        raise ValueError("expected a list of model names with no empty entry")
    return models


def _as_positive_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a positive number of seconds")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a positive number of seconds") from None
    if number <= 0:
        raise ValueError("expected a positive number of seconds")
    return number


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError("expected true or false")


def _as_options(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of model options, e.g. {temperature: 0.7}")
    return dict(value)


def _as_budget(value: Any) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(str(value).strip()) < 1:
        raise ValueError("expected a whole number of tokens, e.g. 2048")
    return int(str(value).strip())


def _as_text_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or any(not isinstance(v, str) or not v.strip() for v in value):
        raise ValueError("expected a list of sentences, e.g. [\"never suggest cloud services\"]")
    return [v.strip() for v in value]


def _as_optional_model(value: Any) -> str:
    return "" if value is None or str(value).strip().lower() in ("", "off", "none", "false") else _as_str(value)


def _as_number(low: float, high: float, example: str) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or not low <= number <= high:  # NaN fails the range too
            raise ValueError(f"expected a number from {low:g} to {high:g}, e.g. {example}")
        return number

    return parse


def _as_energy_profile(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("auto", "survival", "balanced", "performance"):
        raise ValueError("expected auto, survival, balanced or performance")
    return text


def _as_optional_url(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    if text.lower() in ("", "off", "none", "false"):
        return ""
    if "://" not in text:
        text = f"http://{text}"
    if not text.startswith(("http://", "https://")):
        raise ValueError("expected an http(s) URL, e.g. http://127.0.0.1:8000")
    return text.rstrip("/")


@dataclass(frozen=True)
class Setting:
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    env: str | None = None


SETTINGS: dict[str, Setting] = {
    "host": Setting(DEFAULT_HOST, lambda v: normalize_host(_as_str(v)), "Ollama server URL", env="OLLAMA_HOST"),
    "keep_alive": Setting("10m", parse_keep_alive, "how long a model stays loaded after a request"),
    "chain": Setting(
        ["llama3.2:1b", "llama3.2:3b", "llama3.1:8b"],
        _as_model_list,
        "default chain of models for `mirador ask`, fastest first",
    ),
    "options": Setting({}, _as_options, "model options sent with every request (temperature, num_ctx, …)"),
    "connect_timeout": Setting(5.0, _as_positive_float, "seconds to wait for the server to accept a connection"),
    "log_history": Setting(True, _as_bool, "record every answer in history.db"),
    "context_budget": Setting(2048, _as_budget, "tokens of compiled context (history, DNA, facts) for stages 2..n"),
    "constraints": Setting([], _as_text_list, "standing constraints every answer respects (a list of sentences)"),
    "context_summariser": Setting("", _as_optional_model,
                                  "small model that summarises older turns for the context (off: extractive)"),
    "energy_profile": Setting("auto", _as_energy_profile,
                              "energy profile: auto (from the power state), survival, balanced or performance"),
    "energy_survival_below": Setting(20.0, _as_number(0, 100, "20"),
                                     "battery percent below which, unplugged, only micro models answer"),
    "energy_micro_max_b": Setting(2.0, _as_number(0.01, 1000, "2"),
                                  "largest model (billions of parameters) the survival profile may use"),
    "energy_balanced_budget": Setting(0.5, _as_number(0.01, 1, "0.5"),
                                      "on battery: share of the full-power plan's energy a plan may spend"),
    "energy_active_watts": Setting(20.0, _as_number(0.1, 5000, "20"),
                                   "watts the machine draws while a model decodes, until a sensor says"),
    "memory_enabled": Setting(True, _as_bool, "pattern memory: learn from ratings, offer similar answers as context",
                              env="MIRADOR_MEMORY"),
    "memory_url": Setting("", _as_optional_url,
                          "a Chroma server (http://host:port) for pattern memory; empty: data dir's chroma/",
                          env="MIRADOR_MEMORY_URL"),
    "memory_embedder": Setting("local", _as_str, "embedder of pattern memory: local, or ollama[:MODEL]"),
    "preload": Setting(True, _as_bool, "load the models of later stages (and predicted ones) in the background",
                       env="MIRADOR_PRELOAD"),
    "preload_prefix": Setting(True, _as_bool, "preloaded later stages also read their prompt's start "
                              "(system prompt, question, drafts so far) before they begin",
                              env="MIRADOR_PRELOAD_PREFIX"),
    "preload_threshold": Setting(0.7, _as_number(0, 1, "0.7"),
                                 "probability above which `mirador preload --predict` loads a model"),
    "preload_max_loaded": Setting(0, _as_number(0, 64, "3"),
                                  "models the server keeps loaded at once (0: OLLAMA_MAX_LOADED_MODELS, else 3)",
                                  env="MIRADOR_PRELOAD_MAX_LOADED"),
    "speculate": Setting(True, _as_bool, "when the router is unsure, start its top interpretations together "
                         "(ask --no-speculate for once)", env="MIRADOR_SPECULATE"),
    "personalized": Setting(False, _as_bool, "route to <base>-mirador (your adapter from `mirador train`) wherever "
                            "the matrix picks <base>, when it is installed"),
    "speculate_margin": Setting(0.15, _as_number(0, 1, "0.15"),
                                "below this margin between the router's top interpretations, start them together"),
    "speculate_battery_below": Setting(50.0, _as_number(0, 100, "50"),
                                       "battery percent below which, unplugged, nothing is speculated"),
}


@dataclass
class Settings:
    values: dict[str, Any]
    sources: dict[str, str]
    paths: Paths

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def _read_file(file: Path) -> dict[str, Any]:
    """The settings stored in config.yaml, each validated; a bad one names its line and key."""
    if not file.exists():
        return {}
    from mirador.yamlfile import load_yaml_mapping

    loaded = load_yaml_mapping(file)
    values: dict[str, Any] = {}
    for key, value in loaded.data.items():
        if key not in SETTINGS:
            raise loaded.error((key,), "unknown setting", hint=f"known settings: {', '.join(SETTINGS)}")
        try:
            values[key] = SETTINGS[key].parse(value)
        except ValueError as exc:
            raise loaded.error((key,), str(exc)) from None
    return values


def load_settings(p: Paths | None = None) -> Settings:
    """Defaults, then config.yaml (validated, errors name line and key), then the environment."""
    p = p or paths()
    values = _read_file(p.config_file)
    sources = {key: str(p.config_file) for key in values}
    for key, setting in SETTINGS.items():
        env_value = os.environ.get(setting.env) if setting.env else None
        if env_value:
            try:
                values[key] = setting.parse(env_value)
            except ValueError as exc:
                raise ConfigError(f"environment variable {setting.env}: {exc}") from None
            sources[key] = f"${setting.env}"
        elif key not in values:
            values[key] = setting.default
            sources[key] = "default"
    return Settings(values, sources, p)


def set_setting(key: str, raw_value: str, p: Paths | None = None) -> Any:
    """Validate and store one setting; a broken existing file is reported, never overwritten."""
    import yaml

    p = p or paths()
    if key not in SETTINGS:
        raise ConfigError(f"unknown setting '{key}'", hint=f"known settings: {', '.join(SETTINGS)}")
    parsed_input: Any = raw_value
    if key == "options":
        parsed_input = yaml.safe_load(raw_value)
    try:
        value = SETTINGS[key].parse(parsed_input)
    except ValueError as exc:
        raise ConfigError(f"setting '{key}': {exc}") from None
    data = _read_file(p.config_file)  # raises on a broken file before anything is written
    data[key] = value
    from mirador.yamlfile import write_private_atomically

    p.config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private_atomically(p.config_file, yaml.safe_dump(data, sort_keys=True, allow_unicode=True))
    return value
