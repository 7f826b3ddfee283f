"""One GGUF model in llama.cpp memory, and the blocking work done with it.

Everything here runs in the model's own worker thread (see llama_cpp.py): llama.cpp
calls release the GIL, so the server's event loop stays free while a model
thinks. A generation checks its cancel flag between tokens (and between prompt
batches), so a client that disconnects frees the model within a token.

A prompt longer than the context is truncated like Ollama does it, never refused:
a chat first loses its oldest turns (system messages and the last message stay);
if the rest still does not fit, the middle of the prompt is cut, keeping the head
(system prompt and template start) and the most recent text. Room is kept for the
answer: num_predict tokens, at most a quarter of the context.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import threading
from collections.abc import Callable
from typing import Any

import llama_cpp
from llama_cpp import Llama

from mirador.runtime.engines.base import EngineError, GenerationRequest, GenerationStats, token_limit
from mirador.runtime.engines.chat_template import TemplateError, render_chat

DEFAULT_NUM_CTX = 4096  # Ollama's default num_ctx
DEFAULT_RESERVE = 256  # room kept for the answer when num_predict is unlimited
# Prompt tokens read between two looks at the cancel flag. On a CPU, reading 16 at a time was as
# fast as 512 (about 120 tokens/s either way on a busy 2-core box), and a closed stream, such as a
# later stage's warm-up cancelled when its stage starts, frees the model within ~16 tokens.
EVAL_STEP = 16
EMBED_MAX_CTX = 2048  # an embedding context decodes a whole text in one batch: bound its memory
# Ollama's default sampling (api/types.go DefaultOptions), so answers feel the same.
SAMPLING_DEFAULTS: dict[str, float] = {
    "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
    "repeat_penalty": 1.1, "presence_penalty": 0.0, "frequency_penalty": 0.0,
}
# With no chat template at all the model is a plain completion model: texts joined.
RAW_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% if not loop.last %}\n\n{% endif %}{% endfor %}"

Emit = Callable[[str], None]


def _number(options: dict[str, Any], key: str, kind: type) -> Any:
    value = options.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return kind(value)


class ModelRunner:
    def __init__(self, path: str, *, adapter: str | None, template: str | None, system: str | None,
                 num_ctx: int | None, train_ctx: int, threads: int | None):
        self.path, self.adapter, self.system, self.threads = path, adapter, system, threads
        self.train_ctx = train_ctx or DEFAULT_NUM_CTX
        self.n_ctx = min(num_ctx or DEFAULT_NUM_CTX, self.train_ctx)
        self.llm = self._open(self.n_ctx)
        self.embedder: Llama | None = None
        self.vocab = self.llm._model.vocab  # the C vocab, for piece and end-of-generation lookups
        self.bos_text = self._special_text(self.llm.token_bos())
        self.eos_text = self._special_text(self.llm.token_eos())
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.template = template if template is not None else (self.llm.metadata.get("tokenizer.chat_template")
                                                                or RAW_TEMPLATE)
        self._piece = ctypes.create_string_buffer(256)

    def _open(self, n_ctx: int, embedding: bool = False) -> Llama:
        kwargs: dict[str, Any] = {"model_path": self.path, "n_ctx": n_ctx, "verbose": False,
                                  "lora_path": self.adapter}
        # Prompt batches get the same threads as generation: llama.cpp's threads spin-wait on each
        # other, so more threads than free cores (cpu_count, as llama-cpp-python defaults to for
        # batches) makes a busy machine many times slower instead of a little faster.
        threads = self.threads or max(1, (os.cpu_count() or 2) // 2)
        kwargs.update(n_threads=threads, n_threads_batch=threads)
        if embedding:
            kwargs.update(embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                          n_batch=n_ctx, n_ubatch=n_ctx)
        try:
            return Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            what = f"{self.path} with the adapter {self.adapter}" if self.adapter else self.path
            raise EngineError(f"llama.cpp cannot load {what}: {exc}") from None

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace")

    def close(self) -> None:
        for llm in (self.llm, self.embedder):
            if llm is not None:
                llm.close()
        self.embedder = None

    # -- prompt -------------------------------------------------------------------------------

    def messages(self, request: GenerationRequest) -> list[dict[str, Any]]:
        if request.messages is not None:
            out = [{**m, "content": m.get("content") or ""} for m in request.messages]
            if self.system and not any(m["role"] == "system" for m in out):
                out.insert(0, {"role": "system", "content": self.system})
            return out
        system = request.system if request.system is not None else self.system
        out = [{"role": "system", "content": system}] if system else []
        return [*out, {"role": "user", "content": request.prompt or ""}]

    def tokens(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        text = render_chat(self.template, messages, bos_token=self.bos_text, eos_token=self.eos_text,
                           add_generation_prompt=add_generation_prompt)
        add_bos = self.add_bos and not (self.bos_text and text.startswith(self.bos_text))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def fit_prompt(self, messages: list[dict[str, Any]], budget: int) -> list[int]:
        """The prompt's tokens, truncated to `budget` as the module docstring says."""
        tokens = self.tokens(messages)
        kept = list(messages)
        while len(tokens) > budget:
            older = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
            if not older:
                break
            del kept[older[0]]
            try:
                tokens = self.tokens(kept)
            except TemplateError:
                continue  # e.g. a template that insists on user/assistant alternation: drop one more
        if len(tokens) <= budget:
            return tokens
        head_messages = [m for m in kept if m.get("role") == "system"] + [{"role": "user", "content": ""}]
        try:
            head = self.tokens(head_messages, add_generation_prompt=False)
        except TemplateError:
            head = tokens[:1]
        keep = min(_common_prefix(head, tokens), budget // 2)
        return tokens[:keep] + tokens[len(tokens) - (budget - keep):]

    # -- generation ----------------------------------------------------------------------------

    def ensure_context(self, num_ctx: int) -> None:
        """A request asking for more context than loaded reloads the model with it (as Ollama
        reloads on a num_ctx change), capped at the context the model was trained for; a
        smaller num_ctx needs no reload: the prompt and answer are simply held to it."""
        wanted = min(num_ctx, max(self.train_ctx, self.n_ctx))
        if wanted > self.n_ctx:
            old = self.llm
            self.llm = self._open(wanted)
            self.vocab = self.llm._model.vocab
            old.close()
            self.n_ctx = wanted

    def generate(self, request: GenerationRequest, stats: GenerationStats, cancel: threading.Event,
                 emit: Emit) -> None:
        options = request.options
        num_ctx = _number(options, "num_ctx", int)
        if num_ctx and num_ctx > 0:
            self.ensure_context(num_ctx)
        context = min(num_ctx, self.n_ctx) if num_ctx and num_ctx > 0 else self.n_ctx
        limit = token_limit(options)
        reserve = max(1, min(context // 4, DEFAULT_RESERVE if limit is None else limit))
        prompt = self.fit_prompt(self.messages(request), max(1, context - reserve))
        stats.prompt_eval_count = len(prompt)
        if not self._evaluate(prompt, cancel, stats):
            return
        self._sample(prompt, options, stats, cancel, emit, limit, context)

    def _evaluate(self, prompt: list[int], cancel: threading.Event, stats: GenerationStats) -> bool:
        """Bring the context to `prompt`, reusing the longest prefix already in the KV cache
        (the previous turn of a chat, or a later stage's prefix warm-up: mirador.predict.prefill),
        in batches so a disconnect is noticed between them; the batches already read stay cached."""
        llm = self.llm
        reuse = _common_prefix(llm.input_ids[: llm.n_tokens].tolist(), prompt)
        reuse = min(reuse, len(prompt) - 1)  # the last token is always decoded: it gives the logits
        if reuse <= 0 or getattr(llm, "_is_recurrent", False) or getattr(llm, "_is_hybrid", False):
            llm.reset()
            reuse = 0
        else:
            llm.n_tokens = reuse  # eval() drops the KV cache beyond this point
        stats.prompt_eval_cached_count = reuse
        step = min(llm.n_batch, EVAL_STEP)
        for start in range(reuse, len(prompt), step):
            if cancel.is_set():
                return False
            llm.eval(prompt[start:start + step])
        return True

    def _sample(self, prompt: list[int], options: dict[str, Any], stats: GenerationStats,
                cancel: threading.Event, emit: Emit, limit: int | None, context: int) -> None:
        llm = self.llm
        settings = {key: _number(options, key, float) for key in SAMPLING_DEFAULTS}
        settings = {k: (v if v is not None else SAMPLING_DEFAULTS[k]) for k, v in settings.items()}
        seed = _number(options, "seed", int)
        llm.set_seed(seed if seed is not None and seed >= 0 else llama_cpp.LLAMA_DEFAULT_SEED)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # The prompt is already evaluated: generate() finds it all cached and samples at once.
        tokens = llm.generate(
            prompt, temp=max(0.0, settings["temperature"]), top_k=int(settings["top_k"]), top_p=settings["top_p"],
            min_p=settings["min_p"], typical_p=settings["typical_p"], repeat_penalty=settings["repeat_penalty"],
            presence_penalty=settings["presence_penalty"], frequency_penalty=settings["frequency_penalty"],
        )
        count = 0
        try:
            for token in tokens:
                if cancel.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    stats.done_reason = "stop"
                    break
                count += 1
                # Pieces are bytes; a character split across tokens comes out whole with the
                # token that completes it (its first token sends "").
                emit(decoder.decode(self._token_bytes(token)))
                if (limit is not None and count >= limit) or llm.n_tokens + 1 >= context:
                    stats.done_reason = "length"
                    break
        finally:
            tokens.close()
        tail = decoder.decode(b"", final=True)
        if tail and not cancel.is_set():
            emit(tail)

    def _token_bytes(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:  # a piece longer than the buffer (long whitespace runs): grow it once
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:max(n, 0)]

    # -- embeddings ----------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled, unit-length vectors from a second, embedding-mode context (made on first use)."""
        if self.embedder is None:
            self.embedder = self._open(min(self.n_ctx, EMBED_MAX_CTX), embedding=True)
        # An empty text has no tokens to pool; a space stands in for it.
        vectors = self.embedder.embed([t or " " for t in texts], normalize=False, truncate=True)
        return [_unit(v) for v in vectors]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _unit(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [float(x) / norm for x in vector]
