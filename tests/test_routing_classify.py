"""Query analysis: the fast path's decisions, step detection, and inputs that must not break it."""

from __future__ import annotations

import time

import pytest

from mirador.routing.classify import classify_fast, detect_language, split_sections
from mirador.routing.matrix import load_matrix


@pytest.fixture
def matrix(mirador_home):
    return load_matrix()


@pytest.mark.parametrize("query, domain", [
    ("my flask route returns 405 on POST", "coding"),
    ("what's 17% of 2,340 and how do I compute it quickly", "math_reasoning"),
    ("write a lullaby for a sleepy dragon", "creative_writing"),
    ("should I move my 401k into bonds before retirement", "financial_analysis"),
    ("tl;dr of the thread below please", "summarization"),
    ("how do you say good night in Italian", "translation"),
    ("what does the evidence say about standing desks", "research_synthesis"),
    ("how long do I cook a 5 lb chicken", "everyday_questions"),
])
def test_fast_path_domains(matrix, query, domain):
    analysis = classify_fast(query, matrix)
    assert analysis.domain == domain, analysis.signals
    assert analysis.path == "fast" and 0 < analysis.confidence <= 1
    assert abs(sum(analysis.scores.values()) - 1) < 0.01


def test_a_code_block_is_coding_whatever_the_words(matrix):
    query = "look at this\n```\nfor x in items:\n    total += x.price\n```\nanything off?"
    analysis = classify_fast(query, matrix)
    assert analysis.domain == "coding" and "[a code block]" in analysis.signals["coding"]


def test_pasted_material_counts_less_than_the_instruction(matrix):
    article = ("Shares of the retailer fell 12% after quarterly revenue missed guidance and margins shrank. "
               "Analysts cut their price targets, citing inventory and interest costs. ") * 8
    analysis = classify_fast(f"summarize this for me\n{article}\nthanks", matrix)
    assert analysis.domain == "summarization", analysis.scores


def test_low_confidence_falls_back_to_everyday_questions_and_says_so(matrix):
    analysis = classify_fast("octopus", matrix)
    assert analysis.domain == "everyday_questions"
    mixed = classify_fast("poem about python code", matrix)  # two domains, neither sure
    if mixed.fell_back:
        assert any("no domain stood out" in note for note in mixed.notes)
        assert mixed.top != "everyday_questions"


def test_a_greeting_needs_one_quick_step(matrix):
    analysis = classify_fast("hey, good morning!", matrix)
    assert analysis.domain == "everyday_questions"
    assert analysis.steps == ("quick_answer",) and "greeting" in analysis.step_reason


def test_a_cue_for_a_later_step_skips_the_middle(matrix):
    # The default matrix has no cues; a user matrix may add them. Simulate one here.
    domain = matrix.domains["creative_writing"]
    polished = domain.chain[2]._replace(cues=("proofread", "polish"))
    matrix = matrix._replace(domains={**matrix.domains, "creative_writing": domain._replace(
        chain=(domain.chain[0], domain.chain[1], polished))}, digest="cues-test")
    analysis = classify_fast("proofread my short story about a lighthouse keeper", matrix)
    assert analysis.domain == "creative_writing"
    assert analysis.steps == ("ideation", "polish") and "drafting skipped" in analysis.step_reason


# -- bad input ------------------------------------------------------------------------------------


def test_a_query_of_100000_characters(matrix):
    query = "summarize this log for me\n" + ("INFO request served in 12 ms from cache\n" * 2600)[:100_000]
    started = time.perf_counter()
    analysis = classify_fast(query, matrix)
    elapsed = time.perf_counter() - started
    assert analysis.domain == "summarization"
    assert analysis.est_tokens > 20_000
    assert elapsed < 0.5  # bounded: only the head and tail of long material are scanned
    one_word = classify_fast("a" * 100_000, matrix)  # one 100,000-letter "word": no crash, a domain
    assert one_word.domain in matrix.domains and one_word.est_tokens > 20_000


@pytest.mark.parametrize("query, language", [
    ("¿Cuál es la mejor manera de aprender a programar en Python?", "Spanish"),
    ("Quelle est la capitale de l'Australie ?", "French"),
    ("Wie lange muss ich ein Ei kochen?", "German"),
    ("東京で一番おいしいラーメン屋はどこですか", "Japanese"),
    ("今天北京的天气怎么样", "Chinese"),
    ("Как дела?", "a Cyrillic-script language"),
])
def test_a_query_in_another_language(matrix, query, language):
    analysis = classify_fast(query, matrix)
    assert analysis.language == language
    assert analysis.domain in matrix.domains
    assert any("multilingual" in note for note in analysis.notes)


def test_english_is_english():
    assert detect_language("how do I boil an egg") == "English"
    assert detect_language("") == "unknown"


@pytest.mark.parametrize("query", ["?!?...", "!!!", "… — ¿¡", "   ???   ", "$%^&*()", "🙂🙂🙂"])
def test_a_query_that_is_only_punctuation(matrix, query):
    analysis = classify_fast(query, matrix)
    assert analysis.domain == "everyday_questions"
    assert any("no words" in note for note in analysis.notes)


def test_sections_split_instruction_from_material():
    short = split_sections("why is the sky blue")
    assert short.instruction == "why is the sky blue" and short.material == ""
    body = "\n".join(f"line {i} of the report with some words in it" for i in range(40))
    long = split_sections(f"give me the key points\n{body}\nkeep it short")
    assert long.instruction == "give me the key points\nkeep it short"
    assert long.material.startswith("line 0")


# -- pattern guards ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern, guard", [
    (r"\$\s?\d+", ("$",)), (r"\b(sin|cos)\s*\(", ("cos", "sin")), (r"\b\w+(Error|Exception)\b", ("rror", "xception")),
    (r"[^x]y", ("y",)), (r"(a|)b?", None), (r"x*", None), (r"(?=abc)", None), (r"(a)\1", ("a",)),
    (r"[a-z]+", None), (r"Hello|World", ("hello", "world")),
])
def test_guards_are_literals_every_match_contains(pattern, guard):
    from mirador.routing.guards import guard_for

    assert guard_for(pattern) == guard


def test_guards_never_skip_a_pattern_that_matches(matrix):
    import re
    from pathlib import Path

    import yaml

    from mirador.routing.guards import passes

    labeled = yaml.safe_load((Path(__file__).parent / "data" / "labeled_queries.yaml").read_text())
    texts = [item["query"] for item in labeled] + [e for d in matrix.domains.values() for e in d.examples]
    texts += ["solve 3x + 7 = 22", "ERROR: KeyError in main.py", "$1,200 at 5% APR", "∫ x dx", "in 3 sentences"]
    checked = 0
    for domain in matrix.domains.values():
        for pattern, guard in zip(domain.patterns, domain.pattern_guards, strict=True):
            regex = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
            for text in texts:
                if regex.search(text):
                    checked += 1
                    assert passes(guard, text.lower()), (pattern, guard, text)
    assert checked > 50
