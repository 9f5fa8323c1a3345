"""The console's incident views in a real daemon, on its Unix socket (no login there): the list's
search and top-level rows, a child's element, a refused retry answered with a redirect whose
page shows the problem once (tests/test_console_views.py has each in detail).
"""

from __future__ import annotations

import html as htmllib
import http.client
import re
import urllib.parse

from support.daemons import DaemonFactory, UnixHTTPConnection

PORTS = [{"port": f"xe-0/0/{n}", "vlan": 100 + n} for n in range(2)]


class Browser:
    """What a browser keeps between requests on the socket: the console's session cookie."""

    def __init__(self, socket_path: str) -> None:
        self.socket = socket_path
        self.cookie = ""

    def call(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        """The status and, for a redirect, its target, else the page."""
        conn = UnixHTTPConnection(self.socket)
        try:
            headers = {"Cookie": self.cookie} if self.cookie else {}
            body = None
            if form is not None:
                body = urllib.parse.urlencode(form)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            resp: http.client.HTTPResponse = conn.getresponse()
            text = resp.read().decode()
            if resp.getheader("Set-Cookie"):
                self.cookie = str(resp.getheader("Set-Cookie")).split(";")[0]
            return resp.status, resp.getheader("Location") or text
        finally:
            conn.close()

    def page(self, path: str) -> str:
        status, text = self.call("GET", path)
        assert status == 200, (path, status, text)
        return text


def test_the_incident_views_in_a_daemon(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory({"workflows": ["console_flows", "console_view_flows"]})
    widget = daemon.start_process("console_create", {"name": "w9", "customer_id": "initech"})
    parent = daemon.start_process("view_parent", {"ports": PORTS})
    daemon.wait_process(widget)
    done = daemon.wait_process(parent, ("completed",))
    browser = Browser(daemon.socket)

    listed = browser.page("/ui/processes")
    assert set(re.findall(r'<tr data-id="([0-9a-f-]{36})"', listed)) == {widget, parent}
    found = browser.page("/ui/processes?q=INITECH")
    assert re.findall(r'<tr data-id="([0-9a-f-]{36})"', found) == [widget]
    assert "widget w9" in found and "customer initech" in found

    text = htmllib.unescape(browser.page(f"/ui/processes/{parent}"))
    for child in done["children"]:
        row = text[text.index(f'<tr data-id="{child["id"]}"') :].split("</tr>")[0]
        element = PORTS[child["element"]]
        assert f"ports[{child['element']}]" in row and f'"port":"{element["port"]}"' in row

    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.page("/ui/workflows/console_quick"))
    assert csrf is not None
    status, target = browser.call("POST", f"/ui/processes/{widget}/retry", {"csrf": csrf[1]})
    assert status == 303 and target.startswith(f"/ui/processes/{widget}?flash=")
    assert "cannot retry" in browser.page(target)
    assert "cannot retry" not in browser.page(target)  # shown once; the reload posted nothing
    assert [a["action"] for a in daemon.get_process(widget)["actions"]] == ["start"]
