"""Everything that reads or writes a file durably.

Owns the services-file reader (``inputs``) and one-shot input spooling (``spool``), the response cache
(``cache``), the output writer, reader and resume (``writer``, ``reader``, ``resume``), the quarantine store,
the one-writer lock (``lock``), schema migrations (``migrate``), shard merging (``merge``), the record of
provider batches (``batches``) and atomic file replacement (``_atomic``, used by all of them). Depends on
``domain`` and ``errors`` only.
"""
