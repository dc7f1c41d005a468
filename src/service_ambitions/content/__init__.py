"""Content: reference data and prompts, from a source (:mod:`.source`), loaded (:mod:`.loader`) and rendered.

The public API for injecting content::

    from service_ambitions.content import InMemorySource, Prompts, load_content
"""

from service_ambitions.content.loader import Content, DirectorySource, load_content
from service_ambitions.content.source import ContentSource, InMemorySource, Prompts

__all__ = ["Content", "ContentSource", "DirectorySource", "InMemorySource", "Prompts", "load_content"]
