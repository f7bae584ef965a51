"""``/dashboard``: live plots of the monitor's series on the worker's web server.

One static page (``static/dashboard.html``) polls ``/dashboard/data`` (the monitor's snapshot as
JSON, with ``/health``'s summary) every two seconds and redraws with uPlot, vendored unchanged as
``static/uplot.iife.min.js`` (MIT; its license heads the file): no CDN, no network at run time, no
build step (uPlot's 2 KB stylesheet is inlined in the page). Served only where the monitor role runs.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["add_dashboard", "dashboard_html"]


@lru_cache(maxsize=1)
def dashboard_html() -> str:
    return (resources.files("ripplerec.streams") / "static" / "dashboard.html").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _uplot_js() -> bytes:
    return (resources.files("ripplerec.streams") / "static" / "uplot.iife.min.js").read_bytes()


def _starting() -> dict[str, Any]:
    """What the dashboard reads while the monitor is still being built (a second or two after a start)."""
    return {"events_seen": 0, "serving_version": None, "window": {}, "series": {}, "follow_through": {},
            "trainer": {}, "lag": {}, "top_items": [], "alerts": [], "versions": []}


def add_dashboard(app: Any, runtime: Any) -> None:
    @app.page("/dashboard")
    async def dashboard_page(web: Any, request: Any) -> Any:
        return web.html(dashboard_html())

    @app.page("/dashboard/uplot.js")
    async def uplot_page(web: Any, request: Any) -> Any:
        return web.bytes(_uplot_js(), content_type="application/javascript")

    @app.page("/dashboard/data")
    async def data_page(web: Any, request: Any) -> Any:
        role = runtime.monitor
        data = role.monitor.snapshot() if role.monitor is not None else _starting()
        data["health"] = runtime.health.report()
        data["reading"] = role.reading
        return web.json(data)

