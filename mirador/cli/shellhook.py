"""`mirador shell-hook bash|zsh|fish`: a snippet that warms the predicted models when a shell starts.

The snippet runs `mirador preload --predict` in the background, detached and
silent, so a new shell never waits for it and never prints a job number.
"""

from __future__ import annotations

import argparse

SNIPPETS = {
    "bash": (
        "# mirador: load the models this hour usually needs (`mirador shell-hook bash`)\n"
        "if command -v mirador >/dev/null 2>&1; then\n"
        "  (mirador preload --predict >/dev/null 2>&1 &)\n"
        "fi\n"
    ),
    "zsh": (
        "# mirador: load the models this hour usually needs (`mirador shell-hook zsh`)\n"
        "if (( $+commands[mirador] )); then\n"
        "  (mirador preload --predict >/dev/null 2>&1 &)\n"
        "fi\n"
    ),
    "fish": (
        "# mirador: load the models this hour usually needs (`mirador shell-hook fish`)\n"
        "if type -q mirador\n"
        "    mirador preload --predict >/dev/null 2>&1 &\n"
        "    disown 2>/dev/null\n"
        "end\n"
    ),
}
INSTALL = {
    "bash": 'eval "$(mirador shell-hook bash)"   # in ~/.bashrc',
    "zsh": 'eval "$(mirador shell-hook zsh)"    # in ~/.zshrc',
    "fish": "mirador shell-hook fish | source    # in ~/.config/fish/config.fish",
}


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.description = "print a shell snippet that preloads the predicted models when a shell starts"
    parser.epilog = "install: " + " | ".join(INSTALL.values())
    parser.add_argument("shell", choices=sorted(SNIPPETS), help="the shell to print the snippet for")
    parser.set_defaults(run=run_shell_hook)


def run_shell_hook(args: argparse.Namespace) -> int:
    print(SNIPPETS[args.shell], end="")
    return 0
