"""The context compiler: a conversation's history, the DNA, remembered facts and standing constraints,
distilled into a token budget for the later stages of a chain.

Entry points: service.compiler_for_chain (for `ask`), service.compile_now (for `mirador context`),
compiler.compile_context (the steps themselves).
"""
