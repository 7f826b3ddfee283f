"""Validation of a trained adapter: deploy it only if it is better and still sane.

Three checks decide, one more informs:
- held-out loss: the adapter's loss on the held-out examples must fall below the base's by `margin`
  (a fraction), so an adapter that merely memorised the training rows is not deployed;
- loss explosion: no NaN/inf anywhere, and the training loss must not end far above where it began
  (a learning rate too high for the data shows up as exactly that);
- coherence of the sanity prompts: every answer says something, and none collapses into the
  runaway repetition LoRA can cause (one word over and over, or a phrase looping);
- optional judge: a larger installed model compares base and adapted answers on the held-out prompts,
  each pair asked twice with the positions swapped to cancel its order bias; it reports a win rate
  (stored with the metrics, it does not block a deployment: a small judge is noisy).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from mirador.errors import MiradorError, RuntimeFailure, RuntimeUnavailable

EXPLOSION_FACTOR = 2.0  # training loss ending above this multiple of its start is an explosion
MIN_WORDS = 6  # repetition is judged only on answers at least this long
DISTINCT_WORDS = 0.3  # fewer distinct words than this fraction: one word over and over
NGRAM_COVER = 0.5  # one repeated phrase covering at least this fraction of the answer: a loop
NGRAM_SIZES = (2, 3, 4)
NGRAM_REPEATS = 3  # a phrase counts as looping from its third occurrence


def _finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def loss_explosion(losses: list[float], valid_after: float) -> str | None:
    """Why the losses say training blew up, or None."""
    bad = [i for i, x in enumerate(losses) if not _finite(x)]
    if bad:
        return f"the training loss became {losses[bad[0]]} at step {bad[0] + 1}"
    if math.isinf(valid_after):
        return "the held-out loss became infinite"
    if len(losses) >= 2:
        k = max(1, min(3, len(losses) // 3))  # a few steps at each end: one noisy step proves nothing
        start, end = _mean(losses[:k]), _mean(losses[-k:])
        if end > start * EXPLOSION_FACTOR:
            return f"the training loss rose from {start:.3f} to {end:.3f}"
    return None


def repetition(answer: str) -> str | None:
    """What makes the answer a runaway repetition, or None if it reads like text."""
    words = re.findall(r"\w+", answer.casefold())
    if len(words) < MIN_WORDS:
        return None
    if len(set(words)) / len(words) < DISTINCT_WORDS:
        word, count = Counter(words).most_common(1)[0]
        return f"the word {word!r} {count} times in {len(words)}"
    for n in NGRAM_SIZES:
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        if not grams:
            continue
        gram, count = grams.most_common(1)[0]
        if count >= NGRAM_REPEATS and count * n / len(words) >= NGRAM_COVER:
            return f"the phrase {' '.join(gram)!r} {count} times in {len(words)} words"
    return None


def incoherent(answer: str) -> str | None:
    if not answer.strip():
        return "an empty answer"
    return repetition(answer)


def validate(before: float, after: float, samples: dict[str, str], margin: float,
             losses: list[float] | None = None, base_samples: dict[str, str] | None = None) -> dict[str, Any]:
    """The verdict on an adapter: {"passed", "reason", "checks": {...}}; the first failing check decides.

    A sanity answer the base model itself gets wrong (empty, or the same loop) is not held against
    the adapter: the check is that the adapter did not *break* the model.
    """
    checks: dict[str, Any] = {"valid_before": before, "valid_after": after, "margin": margin}
    exploded = loss_explosion(list(losses or []), after)
    checks["explosion"] = exploded
    if exploded:
        return {"passed": False, "reason": f"loss explosion: {exploded}", "checks": checks}
    if math.isnan(before) or math.isnan(after):
        return {"passed": False, "reason": "no held-out examples to validate on", "checks": checks}
    checks["improvement"] = (before - after) / before if before else 0.0
    if not after < before * (1 - margin):
        return {"passed": False, "reason": f"held-out loss {before:.4f} -> {after:.4f} did not improve by "
                                           f"{margin:.0%}", "checks": checks}
    coherence: dict[str, str | None] = {}
    for prompt, answer in samples.items():
        problem = incoherent(answer)
        if problem and base_samples and prompt in base_samples and incoherent(base_samples[prompt]):
            problem = None  # the base model does the same: not the adapter's doing
        coherence[prompt] = problem
        if problem:
            checks["coherence"] = coherence
            return {"passed": False, "reason": f"the sanity prompt {prompt!r} got {problem}: {answer!r}",
                    "checks": checks}
    checks["coherence"] = coherence
    return {"passed": True, "reason": f"held-out loss {before:.4f} -> {after:.4f}", "checks": checks}


# --- the judge ---------------------------------------------------------------------------------

JUDGE_SYSTEM = ("You compare two answers to the same question. Reply with the single letter of the better "
                "answer: A or B. Nothing else.")


def judge_prompt(question: str, first: str, second: str) -> str:
    return (f"Question:\n{question}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
            "Which answer is better, A or B?")


def parse_verdict(text: str) -> str | None:
    """'A' or 'B' from the judge's reply (the first standalone letter), None if it named neither."""
    match = re.search(r"\b([AB])\b", text.strip())
    return match.group(1) if match else None


def judge_available(host: str, model: str, timeout: float = 10) -> None:
    """Fail before training, not after, if the judge model is not installed."""
    _post(host, "/api/show", {"model": model}, timeout, missing=model)


def judge(host: str, model: str, prompts: list[str], base: dict[str, str], adapted: dict[str, str],
          timeout: float = 300) -> dict[str, Any]:
    """Win rate of the adapted answers against the base ones, as `model` judges them.

    Each prompt is judged twice, adapted answer first then second: a judge that always says "A" gets
    a tie on every prompt (win rate 0.5), not a false win. A win is both orders agreeing for the
    adapter, a loss both for the base; anything else (disagreement, no letter) is a tie.
    """
    wins = ties = losses = unparsed = 0
    rows = []
    for prompt in prompts:
        if prompt not in base or prompt not in adapted:
            continue
        first = _ask(host, model, judge_prompt(prompt, adapted[prompt], base[prompt]), timeout)
        second = _ask(host, model, judge_prompt(prompt, base[prompt], adapted[prompt]), timeout)
        v1, v2 = parse_verdict(first), parse_verdict(second)
        unparsed += (v1 is None) + (v2 is None)
        adapted_votes = (v1 == "A") + (v2 == "B")
        base_votes = (v1 == "B") + (v2 == "A")
        if adapted_votes == 2:
            wins += 1
        elif base_votes == 2:
            losses += 1
        else:
            ties += 1
        rows.append({"prompt": prompt, "adapted_first": v1, "base_first": v2})
    n = wins + ties + losses
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    return {"model": model, "prompts": n, "wins": wins, "ties": ties, "losses": losses, "unparsed": unparsed,
            "win_rate": rate, "verdicts": rows}


def _ask(host: str, model: str, prompt: str, timeout: float) -> str:
    body = {"model": model, "stream": False, "options": {"temperature": 0, "num_predict": 8},
            "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]}
    answer = _post(host, "/api/chat", body, timeout, missing=model)
    return str((answer.get("message") or {}).get("content", ""))


def _post(host: str, path: str, body: dict[str, Any], timeout: float, missing: str) -> dict[str, Any]:
    import httpx

    try:
        response = httpx.post(host.rstrip("/") + path, json=body, timeout=timeout)
    except httpx.TransportError as exc:
        raise RuntimeUnavailable(f"cannot reach the runtime at {host} for the judge: {exc}",
                                 hint="start it with `mirador serve` (or `ollama serve`), or set OLLAMA_HOST") from None
    if response.status_code == 404:
        raise MiradorError(f"the judge model '{missing}' is not installed",
                           hint=f"install it (`ollama pull {missing}`) or leave out --judge")
    if response.status_code >= 400:
        raise RuntimeFailure(f"the judge model '{missing}' failed: {response.text[:200]}")
    try:
        data = response.json()
    except ValueError:
        raise RuntimeFailure(f"the runtime's {path} answer is not JSON") from None
    return data if isinstance(data, dict) else {}
