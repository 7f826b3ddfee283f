"""The capability matrix as typed objects, built from its YAML form and checked on the way.

NamedTuples rather than dataclasses: four dataclasses cost 5 ms to define,
and this module is on the path to the first token.

`build_matrix(raw, locate)` is the only way in: every problem becomes a
ConfigError from `locate(key_path, problem, hint)`, which names the file and
line the offending key came from (matrix.py tracks that through the overlay).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from mirador.errors import ConfigError

KeyPath = tuple[str, ...]
Locate = Callable[[KeyPath, str, "str | None"], ConfigError]

MODEL_KINDS = ("chat", "embedding")
_MODEL_KEYS = {"params_b", "context", "quantization", "strengths", "tags", "alternatives", "kind"}
_STEP_KEYS = {"step", "needs", "best", "reason", "confidence", "alternatives", "max_tokens", "cues"}
_DOMAIN_KEYS = {"description", "keywords", "strong_keywords", "patterns", "examples", "chain"}
_TOP_KEYS = {"version", "routing", "strengths", "models", "domains"}
_ROUTING_KEYS = {"min_confidence", "fallback_domain"}


class ModelSpec(NamedTuple):
    """A model family the matrix names, and the Ollama tags that satisfy it."""

    id: str
    params_b: float
    context: int
    quantization: str
    strengths: frozenset[str]
    tags: tuple[str, ...]
    alternatives: tuple[str, ...] = ()
    kind: str = "chat"

    @property
    def pull_name(self) -> str:
        """The tag to suggest to `ollama pull`: the first one without a wildcard."""
        return next((t for t in self.tags if "*" not in t), self.tags[0].replace("*", ""))


class StepSpec(NamedTuple):
    name: str
    needs: tuple[str, ...]
    best: str
    reason: str
    confidence: float
    alternatives: tuple[str, ...]
    max_tokens: int | None = None
    cues: tuple[str, ...] = ()  # words that say the user wants this step (e.g. proofread → polish)


class DomainSpec(NamedTuple):
    name: str
    description: str
    keywords: tuple[str, ...]
    patterns: tuple[str, ...]
    strong_keywords: tuple[str, ...]  # words that alone all but settle the domain ("summarize")
    examples: tuple[str, ...]
    chain: tuple[StepSpec, ...]
    pattern_guards: tuple[tuple[str, ...] | None, ...] = ()  # per pattern: literals a match needs (guards.py)


class CapabilityMatrix(NamedTuple):
    strengths: dict[str, str]
    models: dict[str, ModelSpec]
    domains: dict[str, DomainSpec]
    min_confidence: float
    fallback_domain: str
    digest: str  # of the merged content: keys caches built from it (example embeddings)


def build_matrix(raw: dict[str, Any], locate: Locate, digest: str = "", *, check_patterns: bool = True
                 ) -> CapabilityMatrix:
    _known_keys(raw, (), _TOP_KEYS, locate)
    version = raw.get("version", 1)
    if version != 1:
        raise locate(("version",), f"unsupported version {version!r}; this Mirador reads version 1", None)
    strengths = _mapping(raw, ("strengths",), locate)
    for name, text in strengths.items():
        if not isinstance(text, str):
            raise locate(("strengths", name), "expected a one-line description of the strength", None)
    models = {
        name: _model(name, spec, set(strengths), locate)
        for name, spec in _mapping(raw, ("models",), locate).items()
    }
    _check_model_alternatives(models, locate)
    domains_raw = _mapping(raw, ("domains",), locate)
    domains = {
        name: _domain(name, spec, models, set(strengths), locate, check_patterns)
        for name, spec in domains_raw.items()
    }
    if not domains:
        raise locate(("domains",), "no domain is defined", "the default matrix defines everyday_questions and more")
    routing = raw.get("routing") or {}
    if not isinstance(routing, dict):
        raise locate(("routing",), "expected a mapping with min_confidence and fallback_domain", None)
    _known_keys(routing, ("routing",), _ROUTING_KEYS, locate)
    min_confidence = _fraction(routing.get("min_confidence", 0.45), ("routing", "min_confidence"), locate)
    fallback = routing.get("fallback_domain", "everyday_questions")
    if fallback not in domains:
        raise locate(("routing", "fallback_domain"), f"'{fallback}' is not a domain of the matrix",
                     f"one of: {', '.join(domains)}")
    return CapabilityMatrix(dict(strengths), models, domains, min_confidence, fallback, digest)


# -- pieces -----------------------------------------------------------------------------------


def _model(name: str, spec: Any, strengths: set[str], locate: Locate) -> ModelSpec:
    path = ("models", name)
    if not isinstance(spec, dict):
        raise locate(path, "expected a mapping (params_b, context, strengths, tags…)", None)
    _known_keys(spec, path, _MODEL_KEYS, locate)
    for key in ("params_b", "context", "strengths", "tags"):
        if key not in spec:
            raise locate(path, f"missing '{key}'", "every model needs params_b, context, strengths and tags")
    params = spec["params_b"]
    if isinstance(params, bool) or not isinstance(params, (int, float)) or params <= 0:
        raise locate(path + ("params_b",), f"expected a positive number of billions of parameters, got {params!r}",
                     None)
    context = spec["context"]
    if isinstance(context, bool) or not isinstance(context, int) or context <= 0:
        raise locate(path + ("context",), f"expected a positive number of tokens, got {context!r}", None)
    kind = spec.get("kind", "chat")
    if kind not in MODEL_KINDS:
        raise locate(path + ("kind",), f"expected one of {', '.join(MODEL_KINDS)}, got {kind!r}", None)
    tags = _strings(spec["tags"], path + ("tags",), locate, allow_empty=False)
    for index, tag in enumerate(tags):
        if not re.fullmatch(r"[\w./*-]+(:[\w.*-]+)?", tag):
            raise locate(path + ("tags", str(index)), f"'{tag}' is not an Ollama model name such as phi3:mini",
                         None)
    return ModelSpec(
        id=name,
        params_b=float(params),
        context=context,
        quantization=str(spec.get("quantization", "")),
        strengths=frozenset(_vocabulary(spec["strengths"], path + ("strengths",), strengths, locate)),
        tags=tuple(tags),
        alternatives=tuple(_strings(spec.get("alternatives", []), path + ("alternatives",), locate)),
        kind=kind,
    )


def _domain(name: str, spec: Any, models: dict[str, ModelSpec], strengths: set[str], locate: Locate,
            check_patterns: bool) -> DomainSpec:
    path = ("domains", name)
    if not isinstance(spec, dict):
        raise locate(path, "expected a mapping (description, keywords, examples, chain)", None)
    _known_keys(spec, path, _DOMAIN_KEYS, locate)
    description = spec.get("description")
    if not isinstance(description, str) or not description.strip():
        raise locate(path + ("description",), "missing or empty description", "one line saying what belongs here")
    patterns = _strings(spec.get("patterns", []), path + ("patterns",), locate)
    if check_patterns:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise locate(path + ("patterns", str(index)), f"invalid regular expression: {exc}", None) from None
    examples = _strings(spec.get("examples"), path + ("examples",), locate, allow_empty=False,
                        what="example queries (used to classify questions)")
    chain_raw = spec.get("chain")
    if chain_raw is None or chain_raw == []:
        raise locate(path + ("chain",), "the chain is empty: a domain needs at least one step",
                     "give it steps such as extraction, analysis, synthesis, each with best, reason, confidence")
    if not isinstance(chain_raw, list):
        raise locate(path + ("chain",), "expected a list of steps", None)
    chain = tuple(_step(path + ("chain", str(i)), step, models, strengths, locate)
                  for i, step in enumerate(chain_raw))
    names = [step.name for step in chain]
    for i, step_name in enumerate(names):
        if step_name in names[:i]:
            raise locate(path + ("chain", str(i), "step"), f"step '{step_name}' appears twice in the chain", None)
    keywords = tuple(k.lower() for k in _strings(spec.get("keywords", []), path + ("keywords",), locate))
    strong = tuple(k.lower() for k in _strings(spec.get("strong_keywords", []), path + ("strong_keywords",), locate))
    from mirador.routing.guards import guard_for

    return DomainSpec(name, description.strip(), keywords, tuple(patterns), strong, tuple(examples), chain,
                      tuple(guard_for(p) for p in patterns))


def _step(path: KeyPath, spec: Any, models: dict[str, ModelSpec], strengths: set[str], locate: Locate) -> StepSpec:
    if not isinstance(spec, dict):
        raise locate(path, "expected a mapping (step, best, reason, confidence, alternatives)", None)
    _known_keys(spec, path, _STEP_KEYS, locate)
    for key in ("step", "best", "reason", "confidence"):
        if key not in spec:
            raise locate(path, f"missing '{key}'", "every step needs step, best, reason and confidence")
    name = spec["step"]
    if not isinstance(name, str) or not name.strip():
        raise locate(path + ("step",), "expected the step's name, e.g. analysis", None)
    best = _model_ref(spec["best"], path + ("best",), models, locate)
    alternatives = [_model_ref(a, path + ("alternatives", str(i)), models, locate)
                    for i, a in enumerate(_strings(spec.get("alternatives", []), path + ("alternatives",), locate))]
    seen = [best]
    for i, alternative in enumerate(alternatives):
        if alternative in seen:
            raise locate(path + ("alternatives", str(i)),
                         f"the alternatives loop back to '{alternative}', already ranked above it",
                         "list each model once: best first, then alternatives in order of preference")
        seen.append(alternative)
    for model in seen:
        if models[model].kind != "chat":
            raise locate(path, f"'{model}' is an {models[model].kind} model and cannot answer a step", None)
    max_tokens = spec.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens <= 0):
        raise locate(path + ("max_tokens",), f"expected a positive number of tokens, got {max_tokens!r}", None)
    reason = spec["reason"]
    if not isinstance(reason, str) or not reason.strip():
        raise locate(path + ("reason",), "expected a sentence saying why this model is best here", None)
    return StepSpec(
        name=name.strip(),
        needs=tuple(_vocabulary(spec.get("needs", []), path + ("needs",), strengths, locate)),
        best=best,
        reason=reason.strip(),
        confidence=_fraction(spec["confidence"], path + ("confidence",), locate),
        alternatives=tuple(alternatives),
        max_tokens=max_tokens,
        cues=tuple(c.lower() for c in _strings(spec.get("cues", []), path + ("cues",), locate)),
    )


def _check_model_alternatives(models: dict[str, ModelSpec], locate: Locate) -> None:
    """Model-level alternatives form a graph; a cycle would make 'next best' meaningless."""
    for name, spec in models.items():
        for i, alternative in enumerate(spec.alternatives):
            _model_ref(alternative, ("models", name, "alternatives", str(i)), models, locate)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for i, alternative in enumerate(models[name].alternatives):
            if state.get(alternative) == 1:
                path = trail + [name]
                loop = path[path.index(alternative):] + [alternative]
                raise locate(("models", name, "alternatives", str(i)),
                             f"the alternatives form a loop: {' → '.join(loop)}",
                             "an alternative must not lead back to the model it replaces; remove one link")
            if state.get(alternative) is None:
                visit(alternative, trail + [name])
        state[name] = 2

    for name in models:
        if state.get(name) is None:
            visit(name, [])


def _model_ref(value: Any, path: KeyPath, models: dict[str, ModelSpec], locate: Locate) -> str:
    if not isinstance(value, str) or not value.strip():
        raise locate(path, f"expected the name of a model from the models section, got {value!r}", None)
    if value not in models:
        close = _close(value, models, n=3)
        hint = (f"did you mean {', '.join(close)}? " if close else "") + \
            "every model a step names must be defined under `models:` (params_b, context, strengths, tags)"
        raise locate(path, f"unknown model '{value}': no entry in the models section defines it", hint)
    return value


def _vocabulary(value: Any, path: KeyPath, known: set[str], locate: Locate) -> list[str]:
    items = _strings(value, path, locate)
    for i, item in enumerate(items):
        if item not in known:
            close = _close(item, known, n=1)
            raise locate(path + (str(i),), f"unknown strength '{item}'",
                         (f"did you mean {close[0]}? " if close else "") + f"known: {', '.join(sorted(known))}")
    return items


def _fraction(value: Any, path: KeyPath, locate: Locate) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise locate(path, f"confidence must be a number between 0 and 1, got {value!r}",
                     "0 = no trust, 1 = full trust; e.g. 0.8")
    return float(value)


def _mapping(raw: dict[str, Any], path: KeyPath, locate: Locate) -> dict[str, Any]:
    value = raw.get(path[-1])
    if not isinstance(value, dict):
        raise locate(path, f"expected a mapping under '{path[-1]}'", None)
    return value


def _strings(value: Any, path: KeyPath, locate: Locate, *, allow_empty: bool = True,
             what: str = "strings") -> list[str]:
    if value is None and allow_empty:
        return []
    if not isinstance(value, list):
        raise locate(path, f"expected a list of {what}, found {_kind(value)}", None)
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            hint = ("an unquoted ': ' inside text makes YAML read a key; put the text in quotes"
                    if isinstance(item, dict) else None)
            raise locate(path + (str(i),), f"expected {what}: item {i + 1} is {_kind(item)}, not text", hint)
    if not value and not allow_empty:
        raise locate(path, f"expected a non-empty list of {what}", None)
    return [str(v).strip() for v in value]


def _known_keys(mapping: dict[str, Any], path: KeyPath, known: set[str], locate: Locate) -> None:
    for key in mapping:
        if key not in known:
            close = _close(str(key), known, n=1)
            raise locate(path + (str(key),), f"unknown key '{key}'",
                         (f"did you mean {close[0]}? " if close else "") + f"known keys: {', '.join(sorted(known))}")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "true/false", type(None): "empty"}.get(type(value), "a value")


def _close(word: str, options: Any, n: int) -> list[str]:
    import difflib  # only on the way to an error message

    return difflib.get_close_matches(word, list(options), n=n)


# -- the compiled form, for the cache -------------------------------------------------------------


def to_compact(matrix: CapabilityMatrix) -> dict[str, Any]:
    """A validated matrix as JSON-ready lists, rebuilt by `from_compact` without re-validation."""
    return {
        "strengths": matrix.strengths,
        "models": [[m.id, m.params_b, m.context, m.quantization, sorted(m.strengths), list(m.tags),
                    list(m.alternatives), m.kind] for m in matrix.models.values()],
        "domains": [[d.name, d.description, list(d.keywords), list(d.patterns), list(d.strong_keywords),
                     list(d.examples), [[s.name, list(s.needs), s.best, s.reason, s.confidence, list(s.alternatives),
                                         s.max_tokens, list(s.cues)] for s in d.chain],
                     [None if g is None else list(g) for g in d.pattern_guards]]
                    for d in matrix.domains.values()],
        "routing": [matrix.min_confidence, matrix.fallback_domain, matrix.digest],
    }


def from_compact(data: dict[str, Any]) -> CapabilityMatrix:
    models = {m[0]: ModelSpec(m[0], m[1], m[2], m[3], frozenset(m[4]), tuple(m[5]), tuple(m[6]), m[7])
              for m in data["models"]}
    domains = {
        d[0]: DomainSpec(d[0], d[1], tuple(d[2]), tuple(d[3]), tuple(d[4]), tuple(d[5]), tuple(
            StepSpec(s[0], tuple(s[1]), s[2], s[3], s[4], tuple(s[5]), s[6], tuple(s[7])) for s in d[6]),
            tuple(None if g is None else tuple(g) for g in d[7]))
        for d in data["domains"]
    }
    min_confidence, fallback, digest = data["routing"]
    return CapabilityMatrix(dict(data["strengths"]), models, domains, min_confidence, fallback, digest)
