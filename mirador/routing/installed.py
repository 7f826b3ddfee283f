"""What the server has installed, matched against the matrix's model families.

/api/tags is fetched once per command (one request even when the quick and
the refined plan ask at the same time) and every installed tag is matched to
the matrix entry it satisfies: `phi3:mini` and `phi3:3.8b` both satisfy
`phi-3`. A model the matrix does not know still takes part: its size comes
from the server's details or its name, its strengths are inferred
conservatively from both, and every explanation says they were inferred.
"""

from __future__ import annotations

import asyncio
import re
import weakref
from functools import cache
from typing import Any, NamedTuple

from mirador.routing.schema import CapabilityMatrix, ModelSpec

_LIBRARY_PREFIXES = ("registry.ollama.ai/library/", "library/")
_EMBEDDING_FAMILIES = {"bert", "nomic-bert", "xlm-roberta", "jina-bert"}
_EMBEDDING_NAMES = r"embed|minilm|\bbge\b|bge-|e5-|gte-|arctic-embed"


class InstalledModel(NamedTuple):
    name: str  # exactly as the server lists it: what requests must use
    spec: ModelSpec | None  # the matrix entry it satisfies, if any
    params_b: float | None
    context: int | None
    strengths: frozenset[str]
    kind: str  # "chat" or "embedding"
    size: int | None  # bytes on disk, from /api/tags

    @property
    def inferred(self) -> bool:
        return self.spec is None

    @property
    def label(self) -> str:
        return self.name if self.spec is None else f"{self.name} ({self.spec.id})"


def normalize(name: str) -> str:
    name = name.strip().lower()
    for prefix in _LIBRARY_PREFIXES:
        name = name.removeprefix(prefix)
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def glob_match(name: str, pattern: str) -> bool:
    """`*` matches any run of characters; nothing else is special (Ollama names have no ? or [)."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return name == pattern
    if not (name.startswith(parts[0]) and name.endswith(parts[-1])) or len(name) < len(parts[0]) + len(parts[-1]):
        return False
    position = len(parts[0])
    for middle in parts[1:-1]:
        found = name.find(middle, position, len(name) - len(parts[-1]))
        if found < 0:
            return False
        position = found + len(middle)
    return True


def spec_for(matrix: CapabilityMatrix, name: str) -> ModelSpec | None:
    """The matrix entry an installed tag satisfies: an exact tag beats a wildcard one.

    Plain string matching, not fnmatch: fnmatch compiles a regex per pattern, and
    the matrix has seventy of them on the way to the first token.
    """
    wanted = normalize(name)
    for exact in (True, False):
        for spec in matrix.models.values():
            for tag in spec.tags:
                pattern = _normalized_tag(tag)
                if ("*" in pattern) == exact:
                    continue
                if pattern == wanted or (not exact and glob_match(wanted, pattern)):
                    return spec
    return None


@cache
def _normalized_tag(tag: str) -> str:
    return normalize(tag)


def installed_models(matrix: CapabilityMatrix, tags: list[dict[str, Any]]) -> list[InstalledModel]:
    """Every installed model, known or inferred, in the server's order."""
    out: list[InstalledModel] = []
    seen: set[str] = set()
    for entry in tags:
        name = str(entry.get("name") or entry.get("model") or "").strip()
        if not name or name in seen:
            continue
        seen.add(name)
        size = entry.get("size") if isinstance(entry.get("size"), int) else None
        spec = spec_for(matrix, name)
        if spec is not None:
            out.append(InstalledModel(name, spec, spec.params_b, spec.context, spec.strengths, spec.kind, size))
        else:
            out.append(_inferred(name, entry.get("details") or {}, size))
    return out


PERSONAL_SUFFIX = "-mirador"  # what `mirador train` deploys a base's adapter as (learn/deploy.py)
# The candidate a deploy builds and checks before it replaces `<base>-mirador`; a killed deploy can leave
# one behind, and it must never answer a question.
STAGING_MARK = "-next"
STAGING_SUFFIX = PERSONAL_SUFFIX + STAGING_MARK


def personal_twins(models: list[InstalledModel]) -> dict[str, InstalledModel]:
    """{installed base name: its installed `<base>-mirador`}: personalised models whose base is installed."""
    by_name = {normalize(m.name): m for m in models}
    out: dict[str, InstalledModel] = {}
    for model in models:
        if model.name.endswith(PERSONAL_SUFFIX):
            base = by_name.get(normalize(model.name.removesuffix(PERSONAL_SUFFIX)))
            if base is not None and base.kind == model.kind:
                out[base.name] = model
    return out


def _inferred(name: str, details: dict[str, Any], size: int | None) -> InstalledModel:
    lower = name.lower()
    families = {str(details.get("family") or "").lower(), *map(str.lower, details.get("families") or [])}
    if re.search(_EMBEDDING_NAMES, lower) or families & _EMBEDDING_FAMILIES:
        return InstalledModel(name, None, parse_params(details.get("parameter_size"), lower), None,
                              frozenset({"embedding"}), "embedding", size)
    params = parse_params(details.get("parameter_size"), lower)
    strengths = {"general"}
    if params is not None and params <= 4 or params is None and size is not None and size < 3_000_000_000:
        strengths.add("fast")
    if params is not None and params >= 3:
        strengths |= {"summarization", "writing", "instruction_following"}
    if params is not None and params >= 7:
        strengths |= {"analysis", "reasoning", "creative", "research"}
    if re.search(r"cod(e|er|ing)|starcoder|devstral", lower):
        strengths.add("coding")
    if "math" in lower:
        strengths.add("math")
    if re.search(r"(^|[-_:])r1\b|reason|qwq|think", lower):
        strengths |= {"reasoning", "math"}
    return InstalledModel(name, None, params, None, frozenset(strengths), "chat", size)


def parse_params(parameter_size: Any, name: str = "") -> float | None:
    """Billions of parameters from "8.0B" / "135M", else from the tag ("llama3.1:8b").

    One reading of model sizes for the whole program: the energy cost model's.
    """
    from mirador.energy.models import params_from_name, parse_parameter_size

    from_server = parse_parameter_size(parameter_size)
    return from_server if from_server is not None else params_from_name(name)


# -- one /api/tags per command ------------------------------------------------------------------

_fetches: weakref.WeakKeyDictionary[Any, asyncio.Task[list[dict[str, Any]]]] = weakref.WeakKeyDictionary()


async def fetch_tags(client: Any) -> list[dict[str, Any]]:
    """The client's /api/tags, fetched once for the life of the client (one command)."""
    task = _fetches.get(client)
    if task is None:
        task = asyncio.ensure_future(client.tags())
        _fetches[client] = task
    return list(await asyncio.shield(task))
