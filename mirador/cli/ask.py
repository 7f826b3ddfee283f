"""`mirador ask`: plan a chain, stream every stage, log it.

The path to the first token is kept short on purpose: no history database, no
YAML unless a config file exists, no rich in a pipe. History is written after
the stream ends, or when Ctrl-C or a dying server ends it early.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mirador.errors import EXIT_INTERRUPTED, MiradorError, UsageError


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="*", help="the question; stdin is appended to it as material")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("-m", "--model", help="answer with this one model (a single stage)")
    which.add_argument("--chain", help="comma-separated models, fastest first, e.g. llama3.2:1b,llama3.1:8b")
    parser.add_argument("-s", "--system", help="system prompt for every stage")
    convo = parser.add_mutually_exclusive_group()
    convo.add_argument("-c", "--continue", dest="continue_last", action="store_true",
                       help="continue the last conversation")
    convo.add_argument("--cid", type=int, help="continue the conversation with this id")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="model option, e.g. -o temperature=0.2 -o num_ctx=8192 (repeatable)")
    parser.add_argument("--keep-alive", help="how long models stay loaded afterwards (5m, 1h, -1 forever, 0)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON event per line (NDJSON)")
    parser.add_argument("--final", action="store_true", help="print only the last stage's answer")
    parser.add_argument("--no-log", action="store_true", help="do not record this exchange in history")
    parser.add_argument("--no-dna", action="store_true", help="do not apply your DNA (mirador dna show) this once")
    parser.add_argument("--profile", choices=("auto", "survival", "balanced", "performance"),
                        help="energy profile for the planner's choice (default: the setting, else the power state)")
    parser.add_argument("--no-speculate", action="store_true",
                        help="when the router is unsure, do not start its top interpretations together")
    parser.set_defaults(run=run_ask)


def read_prompt(words: list[str], stdin: Any = None) -> str:
    """The question from the arguments, with piped stdin appended as material (or alone)."""
    stdin = sys.stdin if stdin is None else stdin
    prompt = " ".join(words).strip()
    material = ""
    if stdin is not None and not stdin.isatty():
        raw = stdin.buffer.read()
        material = raw.decode("utf-8", errors="replace")
        if "\ufffd" in material and "\ufffd".encode() not in raw:
            print("mirador: stdin is not valid UTF-8; undecodable bytes were replaced with �", file=sys.stderr)
        material = material.strip()
    if prompt and material:
        return f"{prompt}\n\n{material}"
    if prompt or material:
        return prompt or material
    raise UsageError(
        "no question: give it as arguments or on stdin",
        hint='mirador ask "why is the sky blue?"   or   cat notes.md | mirador ask "summarize"',
    )


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"option '{pair}' is not KEY=VALUE", hint="for example: -o temperature=0.2")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value  # a plain string, e.g. -o stop=END
    return options


def chosen_models(args: argparse.Namespace, default_chain: list[str]) -> list[str]:
    if args.model:
        return [args.model]
    if args.chain:
        models = [m.strip() for m in args.chain.split(",") if m.strip()]
        if not models:
            raise UsageError("--chain names no model", hint="--chain llama3.2:1b,llama3.1:8b")
        return models
    return default_chain


def run_ask(args: argparse.Namespace) -> int:
    from mirador.config import load_settings, parse_keep_alive
    from mirador.runtime.pins import keep_alive_for, read_pins
    from mirador.stream.chain import ChainRequest, stages_for

    settings = load_settings()
    prompt = read_prompt(args.prompt)
    options = {**settings.options, **parse_options(args.option)}
    if args.keep_alive is not None:
        try:
            fixed = parse_keep_alive(args.keep_alive)
        except ValueError as exc:
            raise UsageError(f"--keep-alive {args.keep_alive}: {exc}") from None

        def keep_alive(model: str) -> Any:
            return fixed
    else:
        pins = read_pins(settings.paths)

        def keep_alive(model: str) -> Any:
            return keep_alive_for(model, settings.keep_alive, pins)

    conversation_id, earlier_turns = _conversation(args, settings)
    router = _router(args, settings, prompt)
    stages = [] if router else stages_for(chosen_models(args, settings.chain))  # a router plans in _stream
    dna = None if args.no_dna else _dna(settings)
    request = ChainRequest(
        query=prompt,
        stages=stages,
        keep_alive=keep_alive,
        system=args.system,
        history=earlier_turns,
        options=options,
        shape=_shaper(dna),
        context=_context(prompt, earlier_turns, dna, settings, [s.model for s in stages]),
    )
    renderer = _renderer(args)
    from mirador.stream.record import ExchangeRecorder

    log_exchange = settings.log_history and not args.no_log
    meter = _energy_meter() if log_exchange else None

    recorder = ExchangeRecorder(prompt, system=args.system, options=options, conversation_id=conversation_id,
                                shape=request.shape)
    interrupted = False
    watch = _Watch(speculate=settings.speculate and not args.no_speculate)
    try:
        _stream(settings, request, renderer, recorder, router,
                lambda models: _context(prompt, earlier_turns, dna, settings, models), profile=args.profile,
                watch=watch)
    except KeyboardInterrupt:
        interrupted = True
    renderer.close(interrupted)
    record = recorder.finish(interrupted)
    watch.annotate(record, settings)
    if log_exchange:
        from mirador.energy.accounting import account

        account(record, settings, meter)  # each stage's estimated (and measured) joules, for history
        _save(record, renderer)
        _observe(settings)
    return EXIT_INTERRUPTED if interrupted else recorder.exit_code


def _dna(settings: Any) -> Any:
    """The user's DNA (None until `mirador dna` created it): a stat and a JSON read when unchanged."""
    from mirador.dna.store import load_for_ask

    return load_for_ask(settings.paths)


def _shaper(dna: Any) -> Any:
    if dna is None:
        return None
    from mirador.dna.apply import DnaShaper

    return DnaShaper(dna)


def _context(prompt: str, history: list[dict[str, str]], dna: Any, settings: Any, models: list[str]) -> Any:
    """The compile step for stages 2..n (None when there is nothing to compile); it runs beside stage 1."""
    if len(models) < 2 or not (history or settings.constraints or _memory_has_examples(settings)):
        return None  # nothing to compile: keep even the import of the compiler off the path
    from mirador.context.service import compiler_for_chain

    return compiler_for_chain(prompt, history, dna, settings, models)


def _memory_has_examples(settings: Any) -> bool:
    if not settings.memory_enabled:
        return False
    from mirador.memory.learner import has_well_rated

    return has_well_rated(settings.paths)


def _router(args: argparse.Namespace, settings: Any, prompt: str) -> Any:
    """The routing planner picks the chain, unless the user did (-m, --chain, or `chain` in config.yaml)."""
    if args.model or args.chain or settings.sources.get("chain", "default") != "default":
        if args.profile:
            raise UsageError("--profile guides the planner's choice; -m, --chain or the `chain` setting made it",
                             hint="drop --profile, or let the planner choose (no -m/--chain)")
        return None
    from mirador.routing.live import LiveRouter

    def constraints() -> Any:  # called by the router while /api/tags is on its way
        from mirador.energy.profiles import energy_constraint
        from mirador.routing.planner import PlanConstraints

        return PlanConstraints(energy=energy_constraint(args.profile, settings), quality=_learned(settings),
                               personalized=settings.personalized)

    return LiveRouter(settings, prompt, constraints)


def _learned(settings: Any) -> Any:
    """Quality learned from ratings (mirador rate): one small JSON read, no ChromaDB, no embedding."""
    if not settings.memory_enabled:
        return None
    from mirador.memory.learner import quality_for_plan

    return quality_for_plan(settings.paths)


def _energy_meter() -> Any:
    """Package energy (RAPL) or battery draw over the answer, where readable: a few small file reads."""
    from mirador.energy.accounting import EnergyMeter

    return EnergyMeter.start()


class _Watch:
    """What `ask` observes beside the events: each stage's preload state when it started, and the
    speculation, if any; both go into the history record (schema 3)."""

    def __init__(self, speculate: bool):
        from mirador.predict.latency import StageObserver

        self.speculate = speculate
        self.stages = StageObserver()
        self.speculation: Any = None

    def annotate(self, record: Any, settings: Any) -> None:
        self.stages.annotate(record)
        spec = self.speculation
        if spec is None or spec.winner_model is None:
            return
        record.speculation = spec.record(settings)
        if record.stages and record.stages[0].model == spec.winner_model:
            # The executor timed stage 1 from when it adopted the stream: the request left earlier.
            ttft, before = spec.first_stage_timing()
            first = record.stages[0]
            first.ttft_ms = ttft
            if first.total_ms is not None:
                first.total_ms += before


def _stream(settings: Any, request: Any, renderer: Any, recorder: Any, router: Any = None,
            context_for: Any = None, profile: str | None = None, watch: _Watch | None = None) -> None:
    import asyncio

    from mirador.runtime.client import OllamaClient
    from mirador.stream.chain import run_chain
    from mirador.stream.events import StageStarted

    async def main() -> None:
        async with OllamaClient(settings.host, connect_timeout=settings.connect_timeout) as client:
            chain_client: Any = client
            spec = None
            if router is not None:  # the plan needs /api/tags: it is made on this loop, with this client
                request.stages = await router.first_stages(client)
                spec = await _speculate(settings, client, request, router, profile, watch)
                if spec is not None:
                    chain_client = spec.client  # stage 1 continues the winner's stream
                request.context = router.serial_with(context_for([s.model for s in request.stages]))
                if hasattr(renderer, "note"):
                    renderer.note(router.summary())
                    if spec is not None:
                        from mirador.predict.ask_speculation import summary

                        renderer.note(summary(spec))
            preloader = _preloader(settings, client, request, renderer, profile)
            try:
                async for event in run_chain(chain_client, request):
                    if watch is not None and isinstance(event, StageStarted):
                        watch.stages.started(event.stage, event.model, preloader)
                    recorder.handle(event)
                    renderer.handle(event)
                    if preloader is not None:
                        preloader.observe(event)  # later stages read their prompt's start ahead (prefill.py)
                    if router is not None:
                        await router.on_event(event, request.stages)
                        if preloader is not None:  # a refined plan may name other models for stages 2..n
                            preloader.ensure([s.model for s in request.stages])
            finally:
                if spec is not None:
                    await spec.aclose()
                if preloader is not None:
                    await preloader.aclose()
                if router is not None:
                    await router.aclose()

    asyncio.run(main())


async def _speculate(settings: Any, client: Any, request: Any, router: Any, profile: str | None,
                     watch: _Watch | None) -> Any:
    """Start the router's close interpretations together (mirador.predict.ask_speculation); the
    common case, a clear margin, returns at once without planning or importing the executor."""
    if watch is None or not watch.speculate or router.margin >= float(settings.speculate_margin):
        return None
    from mirador.predict.ask_speculation import start

    watch.speculation = await start(client, request, router, settings, profile)
    return watch.speculation


def _preloader(settings: Any, client: Any, request: Any, renderer: Any, profile: str | None) -> Any:
    """Stages 2..n load in the background while stage 1 streams (mirador.predict.preload)."""
    if len(request.stages) < 2 or not settings.preload:
        return None  # a single stage: nothing to preload, nothing imported
    from mirador.predict.preload import StagePreloader

    def note(text: str) -> None:
        if hasattr(renderer, "note"):
            renderer.note(text)
        else:
            print(f"mirador: {text}", file=sys.stderr)

    preloader = StagePreloader(client, request.keep_alive, settings, profile, note, request=request)
    preloader.ensure([s.model for s in request.stages])
    return preloader


def _renderer(args: argparse.Namespace) -> Any:
    from mirador.stream import render

    if args.json:
        return render.JsonRenderer()
    if sys.stdout.isatty():
        return render.TerminalRenderer(final_only=args.final)
    return render.PlainRenderer(final_only=args.final)


def _conversation(args: argparse.Namespace, settings: Any) -> tuple[int | None, list[dict[str, str]]]:
    if not (args.continue_last or args.cid):
        return None, []
    from mirador.history import HistoryStore

    store = HistoryStore(settings.paths.history_db)
    try:
        if args.cid is not None:
            if not store.conversation_exists(args.cid):
                raise MiradorError(f"no conversation with id {args.cid}",
                                  hint="`mirador history` lists exchanges and their conversations")
            cid = args.cid
        else:
            cid = store.last_conversation_id()
            if cid is None:
                return None, []  # nothing to continue: start the first conversation
        return cid, store.conversation_messages(cid)
    finally:
        store.close()


def _save(record: Any, renderer: Any) -> None:
    import sqlite3

    from mirador.history import HistoryStore

    if not record.stages:
        return
    try:
        store = HistoryStore.open_default()
        try:
            exchange_id, _ = store.save_exchange(record)
        finally:
            store.close()
    except (MiradorError, OSError, sqlite3.Error) as exc:
        print(f"mirador: the answer was not saved to history: {exc}", file=sys.stderr)
        return
    if hasattr(renderer, "note"):
        renderer.note(f"saved as #{exchange_id} · mirador history show {exchange_id}")


def _observe(settings: Any) -> None:
    """Memory observes the answer in a detached process (chromadb's import alone takes about a
    second): this one exits at once. Before the store exists (no rating yet), `mirador rate`
    observes every earlier answer when it creates it."""
    if not settings.memory_enabled:
        return
    from mirador.memory.patterns import exists

    if exists(settings):
        from mirador.memory.observe import spawn_background_sync

        spawn_background_sync(settings)
