"""The pages people open: ``/`` (where to go from here), ``/docs`` (Swagger UI)
and ``/redoc`` (ReDoc), with every script, style sheet and icon served from
this server, so they work on a host without internet access.

The assets come from the ``fastapi-offline`` package (Swagger UI 5,
Apache-2.0; ReDoc 2, MIT), mounted under ``/static/docs``. The pages send a
Content-Security-Policy that allows this origin only, so a browser loads
nothing from anywhere else either.
"""

from __future__ import annotations

import html
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, Response

from imagegate import __version__
from imagegate.api.render import JSONBody

STATIC = "/static/docs"
# Swagger UI and ReDoc run inline start-up scripts and styles; ReDoc renders in a blob: worker.
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

LINKS = (  # (name in the JSON answer, path, what it is)
    ("docs", "/docs", "API reference (Swagger UI): every operation, its fields and answers; try them"),
    ("redoc", "/redoc", "API reference (ReDoc)"),
    ("openapi", "/openapi.json", "the OpenAPI document"),
    ("models", "/v1/models", "the models this server serves (needs a key when keys are required)"),
    ("healthz", "/healthz", "liveness"),
    ("readyz", "/readyz", "readiness: database, storage, providers"),
)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _index_html(root: str, base_url: str) -> str:
    items = "\n".join(
        f'    <li><a href="{html.escape(root + path)}"><code>{html.escape(path)}</code></a> &mdash; {html.escape(what)}</li>'
        for _, path, what in LINKS
    )
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>imagegate</title>
  <link rel="icon" href="{root}{STATIC}/favicon.png">
  <style>
    body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 3rem auto; padding: 0 1rem; color: #222; }}
    code {{ background: #f2f2f2; padding: 0 .25rem; border-radius: 3px; }}
    li {{ margin: .3rem 0; }}
  </style>
</head>
<body>
  <h1>imagegate <small>{html.escape(__version__)}</small></h1>
  <p>An OpenAI-compatible Images API. Point any OpenAI SDK at
  <code>{html.escape(base_url)}/v1</code> and call <code>images.generate</code>, <code>images.edit</code>
  or <code>images.create_variation</code>.</p>
  <ul>
{items}
  </ul>
  <p>Administration (keys, teams, usage, storage) is under <code>/admin</code> with the master key
  or an admin key; see the API reference.</p>
</body>
</html>
"""


async def index(request: Request) -> Response:
    """HTML for a browser; JSON (name, version, links) for anything else."""
    root = _root(request)
    if "text/html" in request.headers.get("accept", ""):
        base = request.app.state.service.settings.server.public_url or str(request.base_url).rstrip("/")
        return HTMLResponse(_index_html(root, base), headers=_PAGE_HEADERS)
    return JSONBody({"name": "imagegate", "version": __version__, "links": {name: root + path for name, path, _ in LINKS}})


def install_docs(app: FastAPI) -> None:
    """Serve ``/``, ``/docs``, ``/redoc`` and their assets (call with
    ``docs_url=None, redoc_url=None`` given to FastAPI)."""
    assets = files("fastapi_offline") / "static"
    app.mount(STATIC, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = "/docs/oauth2-redirect"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - API reference",
            swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC}/favicon.png",
            oauth2_redirect_url=root + oauth2_redirect,
            # validatorUrl null: no badge fetched from the online validator.
            # No persistAuthorization: a key typed into "Authorize" is not kept in the browser's storage.
            swagger_ui_parameters={"validatorUrl": None, "displayRequestDuration": True},
        )
        page.headers.update(_PAGE_HEADERS)
        return page

    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url=f"{root}{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(_PAGE_HEADERS)
        return page

    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(oauth2_redirect, swagger_ui_redirect, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
