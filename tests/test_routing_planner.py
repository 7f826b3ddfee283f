"""The planner over different installed sets: best, alternatives, strengths, tiny installs, constraints."""

from __future__ import annotations

import pytest

from mirador.routing.classify import classify_fast
from mirador.routing.installed import installed_models, parse_params
from mirador.routing.matrix import load_matrix
from mirador.routing.planner import NoModelFits, PlanConstraints, plan

TYPICAL = ["llama3.2:1b", "llama3.2:latest", "llama3.1:8b", "qwen2.5-coder:7b", "phi3:mini", "all-minilm:latest"]


@pytest.fixture
def matrix(mirador_home):
    return load_matrix()


def route(matrix, query: str, names: list[str] | list[dict], constraints: PlanConstraints | None = None):
    entries = [n if isinstance(n, dict) else {"name": n} for n in names]
    return plan(classify_fast(query, matrix), matrix, installed_models(matrix, entries), constraints)


def models(routed) -> list[str]:
    return [c.model for c in routed.choices]


def test_every_choice_is_installed_and_used_once(matrix):
    for query in ["fix my segfault in C", "write a poem about rain", "is 91 prime", "hi",
                  "summarize this: the meeting moved to friday", "translate hello into German",
                  "what do studies say about coffee", "should I refinance my mortgage"]:
        routed = route(matrix, query, TYPICAL)
        chosen = models(routed)
        assert chosen and set(chosen) <= set(TYPICAL) and len(chosen) == len(set(chosen))
        assert "all-minilm:latest" not in chosen  # an embedding model never answers


def test_the_best_model_when_installed(matrix):
    routed = route(matrix, "my python script raises KeyError on startup", TYPICAL)
    implementation = next(c for c in routed.choices if c.step == "implementation")
    assert implementation.model == "qwen2.5-coder:7b" and implementation.via == "best"
    assert implementation.confidence == matrix.domains["coding"].chain[1].confidence
    assert implementation.reason == matrix.domains["coding"].chain[1].reason


def test_a_missing_best_model_falls_back_to_the_next_alternative(matrix):
    routed = route(matrix, "my python script raises KeyError on startup", TYPICAL)
    first = routed.choices[0]
    assert first.step == "understanding" and first.via == "alternative" and first.model == "llama3.2:1b"
    fallback = next(f for f in routed.fallbacks if f.step == "understanding")
    assert fallback.wanted == "qwen2.5-coder-1.5b" and "ollama pull qwen2.5-coder:1.5b" in fallback.why
    assert first.confidence < matrix.domains["coding"].chain[0].confidence


def test_then_any_model_with_the_strengths_smallest_adequate_first(matrix):
    # None of the creative drafting models is listed; both unknown models are inferred "creative" (>= 7B).
    names = [{"name": "llama3.2:1b"}, {"name": "house-a:70b", "details": {"parameter_size": "70.6B"}},
             {"name": "house-b:13b", "details": {"parameter_size": "13.0B"}}]
    routed = route(matrix, "write a short story about a lighthouse", names)
    drafting = next(c for c in routed.choices if c.step == "drafting")
    assert drafting.model == "house-b:13b" and drafting.via == "strengths"
    assert "smallest" in drafting.reason and "inferred" in drafting.reason


def test_phi3_mini_satisfies_phi_3(matrix):
    routed = route(matrix, "prove that the square root of 2 is irrational", ["phi3:mini", "llama3.2:1b"])
    assert "phi3:mini" in models(routed)
    assert any(c.matrix_model == "phi-3" for c in routed.choices)


def test_a_tiny_install_still_gets_an_answer(matrix):
    for query in ["hi", "why is the sky blue", "fix my python bug", "write me a haiku", "?!?"]:
        routed = route(matrix, query, [{"name": "smollm2:135m", "details": {"parameter_size": "134.52M"}}])
        assert models(routed) == ["smollm2:135m"]
        assert routed.choices[0].via in ("alternative", "strengths", "best")


def test_the_scripted_servers_models_are_planned_by_inference(matrix):
    scripted = [{"name": "fast:1b", "details": {"parameter_size": "1.2B"}},
                {"name": "mid:3b", "details": {"parameter_size": "3.2B"}},
                {"name": "big:8b", "details": {"parameter_size": "8.0B"}}]
    routed = route(matrix, "why is the sky blue", scripted)
    assert models(routed) == ["fast:1b", "mid:3b"]
    coding = route(matrix, "fix my python bug", scripted)
    assert models(coding)[0] == "fast:1b" and models(coding)[-1] == "big:8b"  # a larger general model ends it
    assert coding.choices[-1].via == "general"


def test_nothing_fits_is_an_error_listing_what_to_pull(matrix):
    with pytest.raises(NoModelFits) as caught:
        route(matrix, "write a poem about the sea", ["qwen2.5-coder:7b", "all-minilm:latest"])
    assert "creative writing" in caught.value.message and "qwen2.5-coder:7b" in caught.value.message
    assert "ollama pull llama3.2:3b" in caught.value.hint and "mirador ask -m" in caught.value.hint
    with pytest.raises(NoModelFits) as empty:
        route(matrix, "hi", [])
    assert "installed chat models: none" in empty.value.message


def test_a_power_budget_from_outside(matrix):
    def draw(model):  # what the energy module would supply: watts grow with size
        return (model.params_b or 1) * 3

    routed = route(matrix, "fix my python bug", TYPICAL, PlanConstraints(power_budget_w=12, model_power_w=draw))
    sizes = {m.name: m.params_b for m in routed.installed}
    assert all(sizes[name] * 3 <= 12 for name in models(routed))
    assert "qwen2.5-coder:7b" not in models(routed) and "llama3.1:8b" not in models(routed)
    assert any("over the 12 W budget" in note for note in routed.notes)


def test_learned_quality_reorders_the_candidates(matrix):
    scores = {("coding", "llama3.1:8b"): 1.0, ("coding", "qwen2.5-coder:7b"): 0.05}
    routed = route(matrix, "fix my python bug", TYPICAL,
                   PlanConstraints(quality=lambda domain, model: scores.get((domain, model))))
    implementation = next(c for c in routed.choices if c.step == "implementation")
    assert implementation.model == "llama3.1:8b"
    assert any("your ratings" in note for note in routed.notes)


def test_excluded_and_reserved_models_are_not_chosen(matrix):
    routed = route(matrix, "fix my python bug", TYPICAL,
                   PlanConstraints(excluded=frozenset({"qwen2.5-coder:7b"}), reserved=frozenset({"llama3.2:1b"})))
    assert "qwen2.5-coder:7b" not in models(routed) and "llama3.2:1b" not in models(routed)


def test_a_long_query_prefers_models_with_room_for_it(matrix):
    material = "The quarterly report says revenue grew and costs fell. " * 2000  # ~28k tokens
    routed = route(matrix, "summarize this\n" + material, ["phi3:mini", "llama3.2:1b", "llama3.1:8b"])
    assert "phi3:mini" not in models(routed)  # a 4k context cannot hold it
    assert models(routed) == ["llama3.2:1b", "llama3.1:8b"]


def test_a_query_in_another_language_prefers_multilingual_models(matrix):
    routed = route(matrix, "¿Cuál es la capital de Australia y por qué no es Sídney?",
                   ["gemma2:2b", "qwen2.5:1.5b", "llama3.2:latest"])
    assert routed.choices[0].model == "qwen2.5:1.5b"  # gemma2:2b is not multilingual in the matrix


def test_the_planner_is_fast(matrix):
    routed = route(matrix, "fix my python bug", TYPICAL)
    assert routed.elapsed_ms < 50  # typically a tenth of a millisecond


@pytest.mark.parametrize("size, name, expected", [
    ("8.0B", "", 8.0), ("134.52M", "", 0.13452), ("", "llama3.1:8b", 8.0), ("", "smollm2:135m", 0.135),
    ("", "mixtral:8x7b", 56.0), ("", "qwen2.5:0.5b-instruct", 0.5), ("", "mystery:latest", None),
])
def test_parameter_sizes(size, name, expected):
    got = parse_params(size, name)
    assert got == pytest.approx(expected) if expected is not None else got is None

