"""`mirador config show | path | set KEY VALUE`."""

from __future__ import annotations

import argparse
import json

from mirador.cli.common import print_table


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="every setting, its value and where the value came from")
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=run_show)
    sub.add_parser("path", help="where the config file and the data live").set_defaults(run=run_path)
    setter = sub.add_parser("set", help="validate and store one setting")
    setter.add_argument("key")
    setter.add_argument("value")
    setter.set_defaults(run=run_set)


def run_show(args: argparse.Namespace) -> int:
    from mirador.config import SETTINGS, load_settings

    settings = load_settings()
    if args.json:
        print(json.dumps({k: {"value": settings.values[k], "source": settings.sources[k]} for k in SETTINGS}))
        return 0
    print_table(
        ["setting", "value", "from", "meaning"],
        [[k, json.dumps(settings.values[k], ensure_ascii=False), settings.sources[k], s.doc]
         for k, s in SETTINGS.items()],
    )
    return 0


def run_path(args: argparse.Namespace) -> int:
    from mirador.config import paths

    p = paths()
    print(f"config file: {p.config_file}{'' if p.config_file.exists() else '  (not created yet)'}")
    print(f"data dir:    {p.data_dir}")
    print(f"history:     {p.history_db}")
    return 0


def run_set(args: argparse.Namespace) -> int:
    from mirador.config import paths, set_setting

    p = paths()
    value = set_setting(args.key, args.value, p)
    print(f"{args.key} = {json.dumps(value, ensure_ascii=False)}  (saved in {p.config_file})")
    return 0
