"""The processing engine: what a run, ``map`` and ``reverse`` do with the jobs of a batch.

Owns the :class:`~service_ambitions.engine.engine.ProcessingEngine` (bounded admission, budget admission,
resume, record cache, reorder buffer, quarantine of failures and problems, the run report and header), the
stage pipeline of one service (``pipeline``: descriptions, features per plateau, mappings per set), the
mapping merge and strict-mode problems, plateau assembly, re-mapping and reverse, cost estimates, the
watchdog and batch-mode waves. Calls models only through the gateway (``llm``), writes only through
``store``; receives everything else in the :class:`~service_ambitions.context.RunContext`.
"""
