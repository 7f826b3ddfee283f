"""Rendering a model's chat template (Jinja, as stored in GGUF `tokenizer.chat_template`), sandboxed.

A chat template comes from a model file, and model files come from strangers:
rendering one in a plain Jinja environment lets a crafted template reach
Python's internals (`''.__class__.__mro__[1].__subclasses__()`) and run code on
this machine — the CVE class that hit llama-cpp-python (CVE-2024-34359). So
templates render in Jinja's ImmutableSandboxedEnvironment, where any access to
an unsafe attribute fails at once with a TemplateError (instead of quietly
rendering as an empty string), and repetition of strings and lists is bounded
so a template cannot exhaust memory either.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from typing import Any

from mirador.runtime.engines.base import EngineError

# Longest string or list a template may build by repetition ('x' * n).
MAX_REPEAT = 1_000_000


class TemplateError(EngineError):
    """A chat template is broken, raised an error on purpose, or tried to escape its sandbox."""


def _raise_exception(message: str) -> None:
    # Templates call this to refuse a conversation they cannot format (Transformers convention).
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Transformers' tojson: no HTML escaping (Jinja's built-in one escapes <, > and &).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2.ext
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class StrictSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_REPEAT:
                        raise SecurityError(f"the template builds a sequence longer than {MAX_REPEAT} items")
            if operator == "**" and isinstance(right, int) and abs(right) > 64:
                raise SecurityError("the template raises a number to a power above 64")
            return super().call_binop(context, operator, left, right)

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=64)
def compile_template(source: str) -> Any:
    """Compile a Jinja chat template once; TemplateError if it is not valid Jinja."""
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"the chat template is not valid Jinja (line {exc.lineno}: {exc.message})") from None


def render_chat(
    source: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: list[Any] | None = None,
) -> str:
    """The prompt text for `messages`; TemplateError if the template fails or breaks its sandbox."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError

    template = compile_template(source)
    try:
        return template.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token, tools=tools,
        )
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(f"the chat template was refused: it tried something unsafe ({exc})") from None
    except JinjaError as exc:
        raise TemplateError(f"the chat template failed: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as exc:
        raise TemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from None


# Ollama's own templates are Go text/template ("{{ .Prompt }}"), a different language.
_GO_ACTION = re.compile(r"{{-?\s*(\.|\$\.|if \.|range \.|end\b)")


def looks_like_go_template(source: str) -> bool:
    return bool(_GO_ACTION.search(source)) and "{%" not in source
