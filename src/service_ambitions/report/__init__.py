"""Reports on an evolutions file: a static HTML site (``build_site``) and flat tables (``export_tables``).

Both stream the file through the public reader (:func:`~service_ambitions.store.reader.iter_evolutions`), so
memory holds one service plus what is aggregated, whatever the number of services.
"""

from __future__ import annotations

from service_ambitions.report.export import ExportResult, export_tables
from service_ambitions.report.site import SiteResult, build_site

__all__ = ["ExportResult", "SiteResult", "build_site", "export_tables"]
