"""Wiring the console into the collector app: templates (``aiohttp_jinja2.setup``, the
one place), the signer, the quality cache, the secure-headers hook, and the URL table.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from vigil.collector.console import bounded, fmt, forms, views
from vigil.collector.console.quality import QualityCache
from vigil.collector.console.web import PREFIX, add_secure_headers
from vigil.collector.keys import quality_cache_key

HERE = Path(__file__).parent
ITEM = "{item_id:[0-9]{1,19}}"
NTH = "{n:[0-9]{1,9}}"  # an item's number in an incident's list, from 1


def setup_console(app: web.Application) -> None:
    """Templates (autoescaped), the console's app keys and hooks, and its routes."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(("html",), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt.FILTERS)
    env.globals["sla"] = fmt.sla
    env.globals["excerpt"] = bounded.excerpt
    env.globals["RUN_EXCERPT_BYTES"] = bounded.RUN_EXCERPT_BYTES
    env.globals["ENTRY_BYTES"] = bounded.ENTRY_BYTES
    app[quality_cache_key] = QualityCache()
    app.on_response_prepare.append(add_secure_headers)
    r = app.router
    r.add_get("/", views.root)
    r.add_get(PREFIX, views.root)
    r.add_get(f"{PREFIX}/", views.queue_page)
    r.add_get(f"{PREFIX}/login", views.login_page)
    r.add_post(f"{PREFIX}/login", forms.login)
    r.add_post(f"{PREFIX}/logout", forms.logout)
    r.add_get(f"{PREFIX}/incidents/{ITEM}", views.incident_page)
    r.add_get(f"{PREFIX}/incidents/{ITEM}/runs", views.incident_runs_page)
    r.add_get(f"{PREFIX}/incidents/{ITEM}/runs/{NTH}", views.incident_run_output)
    r.add_get(f"{PREFIX}/incidents/{ITEM}/timeline", views.incident_timeline_page)
    r.add_get(f"{PREFIX}/incidents/{ITEM}/timeline/{NTH}", views.incident_timeline_entry)
    r.add_get(f"{PREFIX}/incidents/{ITEM}/report.md", views.incident_report)
    r.add_post(f"{PREFIX}/incidents/{ITEM}/acknowledge", forms.acknowledge)
    r.add_post(f"{PREFIX}/incidents/{ITEM}/resolve", forms.resolve)
    r.add_post(f"{PREFIX}/incidents/{ITEM}/link", forms.link_problem)
    r.add_post(f"{PREFIX}/silences", forms.silence)
    r.add_get(f"{PREFIX}/problems", views.problems_page)
    r.add_get(f"{PREFIX}/problems/{ITEM}", views.problem_page)
    r.add_post(f"{PREFIX}/problems/{ITEM}/acknowledge", forms.acknowledge)
    r.add_post(f"{PREFIX}/problems/{ITEM}/capa", forms.save_capa)
    r.add_post(f"{PREFIX}/problems/{ITEM}/close", forms.close_problem)
    r.add_get(f"{PREFIX}/hosts", views.hosts_page)
    r.add_get(f"{PREFIX}/hosts/{{agent_id}}", views.host_page)
    r.add_get(f"{PREFIX}/catalog", views.catalog_page)
    r.add_get(f"{PREFIX}/quality", views.quality_page)
    r.add_static(f"{PREFIX}/static/", HERE / "static", name="console_static")
