"""The domain: pydantic models and pure functions of the product's records, no I/O (DOMAIN §2 to §4).

Owns the input records (``inputs``), reference data (``reference``: plateaus, roles, catalogues, facets,
mapping sets), the answer schema of every stage (``responses``), the output records of schema 1.1
(``output``), their canonical order and grouping (``grouping``), feature ids (``ids``) and shards (``shard``).
Depends on pydantic only: every other package may import it, it imports none of them.
"""
