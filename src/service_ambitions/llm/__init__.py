"""Everything between a stage's request and a model's answer: the gateway and its per-model stacks.

Owns the gateway (``gateway``: the one path of every model call; it assembles the per-model stacks and
the stages' fallbacks) and the one-job modules it is made of: cache keys (``keys``), cached answers
(``answer_cache``), the request slot (``slots``), requests with output re-asks (``request_loop``),
accounting (``accounting``) and error translation (``failures``). Also model resolution from
``provider:model`` ids and provider keys (``providers``), the per-model stack (``stack``), output modes,
rate limits learned from headers and the FIFO limiter (``ratelimits``, ``limiter``, ``admission``),
transport retries (``transport``), prompt caching, pricing and budgets (``pricing``, ``cost``), the
``offline`` model, failure injection (``chaos``) and provider batch APIs (``batching``, ``deferral``).
May use ``settings``, ``store``, ``observability`` and ``domain``; never ``context``, ``engine`` or ``cli``.
"""
