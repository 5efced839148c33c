"""The console's page and files, and the API documents' pages: served by the service itself, kept out of
the OpenAPI document, and no way out of their folder. (tests/e2e/test_console.py drives the page in a browser.)"""

from __future__ import annotations

from app.db import queries
from app.db.session import session_scope
from tests.app.api.conftest import Api


def test_the_page_and_its_files_come_from_this_server(api: Api) -> None:
    page = api.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/console/console.js"' in page.text and "http" not in page.text.split("<body>")[0]
    assert api.client.get("/console/console.js").headers["content-type"].startswith("text/javascript")
    assert api.client.get("/console/console.css").headers["content-type"].startswith("text/css")
    for name in ("missing.js", "%2e%2e%2fconsole.py", "..%2f..%2fconfig.py", "index.html", "__init__.py"):
        assert api.client.get(f"/console/{name}").status_code == 404, name
    assert api.client.post("/").status_code == 405


def test_the_documents_load_nothing_from_elsewhere(api: Api) -> None:
    for path in ("/docs", "/redoc"):
        html = api.client.get(path).text
        assert "cdn." not in html and "fonts.googleapis" not in html, path
    assert b"cdn.redoc.ly" not in api.client.get("/console/redoc.js").content
    assert api.client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert '"validatorUrl": null' in api.client.get("/docs").text  # no badge fetched from an online validator


def test_pages_are_not_operations_of_the_api(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    assert all(p.startswith(("/v1/", "/healthz", "/readyz", "/metrics")) for p in paths), sorted(paths)


def test_whoami_says_whether_the_key_is_an_admin_key(api: Api) -> None:
    assert api.client.get("/v1/organizations/me", headers=api.auth()).json()["admin"] is False
    with session_scope() as session:
        _, key = queries.create_key(session, "provider", admin=True)
    me = api.client.get("/v1/organizations/me", headers={"Authorization": f"Bearer {key}"}).json()
    assert me["name"] == "provider" and me["admin"] is True
