"""A self-contained HTML page: opens offline in any browser and makes no network request.

``report.html`` and the review page of ``predict --html`` are built with :func:`page`. Images
are data URIs, charts inline SVG, styles and scripts inline; the page's Content Security
Policy forbids every fetch (``default-src 'none'``), so a stray reference would be blocked and
reported in the browser's console instead of reaching a network.
"""

from __future__ import annotations

import base64
import html
import json

#: Nothing may be fetched: only inline styles and scripts, and data or blob images.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

BASE_CSS = """
:root { --ink: #1d2430; --muted: #5b6575; --line: #d8dde5; --panel: #f5f7fa;
  --accent: #0b63b6; --bad: #b42318; --good: #067647; --warn: #b54708; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: #fff; }
main { max-width: 1240px; margin: 0 auto; padding: 12px 20px 60px; }
header.top { position: sticky; top: 0; z-index: 5; background: #fffffff0;
  border-bottom: 1px solid var(--line); }
header.top nav { max-width: 1240px; margin: 0 auto; padding: 6px 20px; display: flex;
  flex-wrap: wrap; gap: 4px 14px; font-size: 14px; }
header.top nav a { color: var(--accent); text-decoration: none; }
h1 { font-size: 22px; margin: 14px 0 6px; }
h2 { font-size: 18px; margin: 30px 0 8px; padding-top: 6px; border-top: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
p.note, .note { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left; }
td { white-space: nowrap; }
th { background: var(--panel); font-weight: 600; vertical-align: bottom; }
.num { text-align: right; }
.scroll { overflow-x: auto; max-width: 100%; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.panel { border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
.best { font-weight: 700; }
code { background: var(--panel); padding: 1px 4px; border-radius: 3px; font-size: 13px; }
button, select { font: inherit; font-size: 13.5px; }
button { border: 1px solid var(--line); background: var(--panel); border-radius: 4px;
  padding: 3px 10px; cursor: pointer; }
button.on { background: var(--accent); color: #fff; border-color: var(--accent); }
svg text { font-family: system-ui, sans-serif; }
"""


def escape(text: object) -> str:
    """``text`` made safe for HTML element content and quoted attributes."""
    return html.escape(str(text), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    """``data:`` URI holding ``data`` (base64)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def script_json(payload: object) -> str:
    """JSON safe to place inside a ``<script>`` element (no ``</script>`` can close it)."""
    return json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")


def page(title: str, body: str, *, css: str = "", script: str = "", nav: str = "") -> str:
    """A complete HTML document with :data:`CONTENT_SECURITY_POLICY` and :data:`BASE_CSS`.

    Args:
        title: the document title (escaped here).
        body: HTML of the ``<main>`` element.
        css: page-specific styles.
        script: page-specific JavaScript, run after the body is parsed.
        nav: HTML of a sticky navigation bar (links to the page's sections), if any.
    """
    header = f'<header class="top"><nav>{nav}</nav></header>' if nav else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n"
        f"<style>{BASE_CSS}{css}</style>\n</head>\n<body>\n{header}\n<main>\n{body}\n</main>\n"
        f"<script>\n{script}\n</script>\n</body>\n</html>\n"
    )
