"""Test doubles shared by the test suite and the benchmark (never used by a run).

Owns the local OpenAI-compatible fake server (``openai_server``, with its request handler, rate-limit
simulation, wire protocol and Batch API), which answers with the ``offline`` model's content. Only tests,
benchmarks and scripts import this package; no module of a run does.
"""
