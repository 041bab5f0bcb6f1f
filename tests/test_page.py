"""The status page: ``render`` on hand-built status dicts (escaping, relative times at a fixed ``now``, missing
keys), then what a person sees in a real headless Chromium, first on a static render, then on a running daemon
whose tenant rollout fails in one tenant and is fixed.

Chromium and chromedriver are Debian's (``apt-get install chromium chromium-driver``; .ci/run installs them when
missing), driven through selenium. The browser is never asked to reload: the page's own meta refresh must bring
the new state, and the tests poll the DOM for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from orchestrator.daemon import page
from tests.conftest import columns, wait_for
from tests.test_daemon import Daemon, eventually, manifests, register

T = TypeVar("T")

NOW = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC
SCRIPT = "<script>window.pwned = 1</script>"


def full_status() -> dict[str, Any]:
    """Every key of /status, with a failing canary holding the rollout and a rejected edit."""
    return {
        "revision": "git:0123456789abcdef0123456789abcdef01234567",
        "config_valid": False,
        "problems": [
            {"file": "config/accounts.yaml", "line": 9, "field": "spec.attributes[1].type", "message": "unknown type"}
        ],
        "rejected_revision": "git:0123456789abcdef0123456789abcdef01234567+dirty.89abcdef",
        "started": True,
        "ready": False,
        "ready_reason": "2 tenants of app failed",
        "last_success": NOW - 3600,
        "last_reconcile": {
            "at": NOW - 12,
            "seconds": 1.25,
            "revision": "git:0123456789abcdef0123456789abcdef01234567",
            "ok": False,
            "errors": ["app: tenant rollout held by canaries", "other: unrelated"],
            "generated": [],
            "applied": {"app": []},
        },
        "repos": [
            {
                "name": "app",
                "database": "postgresql://db/app",
                "tenant_source": "query",
                "latest_version": 20260102000000,
                "global_version": 20260101000000,
                "latest_tenant_version": 20260102000001,
                "tenants": 5,
                "tenants_current": 3,
                "tenants_behind": 0,
                "tenants_failed": ["org_b", "org_a"],
                "failures": [
                    {
                        "tenant": "org_b",
                        "error": 'relation "notes" already exists',
                        "failures": 2,
                        "since": NOW - 300,
                        "next_retry": NOW + 40,
                        "canary": False,
                    },
                    {
                        "tenant": "org_a",
                        "error": f"check violated {SCRIPT} & more",
                        "failures": 3,
                        "since": NOW - 7500,
                        "next_retry": NOW - 5,
                        "canary": True,
                    },
                ],
                "held_by_canary": ["org_a"],
                "last_error": None,
            }
        ],
        "rollouts": [
            {
                "id": "old1",
                "repo": None,
                "tenants": None,
                "dry_run": False,
                "status": "done",
                "created": NOW - 90000,
                "finished": NOW - 89990,
                "error": None,
            },
            {
                "id": "new2",
                "repo": "app",
                "tenants": ["org_a"],
                "dry_run": True,
                "status": "failed",
                "created": NOW - 70,
                "finished": NOW - 65,
                "error": "a canary <failed>",
            },
        ],
        "recent_events": [
            {"at": NOW - 20, "event": "attempt.retrying", "repo": "app", "tenant": "org_b", "error": "deadlock"},
            {"at": NOW - 10, "event": "target.failed", "repo": "app", "tenant": "org_a", "error": SCRIPT},
        ],
        "jobs": {
            "reconcile": {"last_started": NOW - 13, "last_finished": NOW - 12, "running_for": None},
            "tenants": {"last_started": NOW - 4, "last_finished": None, "running_for": 4.0},
        },
    }


# -- a small DOM of the rendered page, to assert on text and structure rather than on markup ------------------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs = tag, attrs
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def find(self, **attrs: str) -> list[Node]:
        """Descendants whose attributes (``class_`` matches one class, ``tag`` the element) include ``attrs``."""
        return [node for node in self.walk() if _matches(node, attrs)]

    def one(self, **attrs: str) -> Node:
        found = self.find(**attrs)
        assert len(found) == 1, (attrs, len(found))
        return found[0]


def _matches(node: Node, attrs: dict[str, str]) -> bool:
    for key, value in attrs.items():
        if key == "tag":
            ok = node.tag == value
        elif key == "class_":
            ok = value in node.attrs.get("class", "").split()
        else:
            ok = node.attrs.get(key.replace("_", "-")) == value
        if not ok:
            return False
    return True


VOID = {"meta", "link", "br", "img", "input", "hr"}


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def dom(status: dict[str, Any], now: float = NOW) -> Node:
    builder = _Builder()
    builder.feed(page.render(status, now))
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def squeeze(text: str) -> str:
    return " ".join(text.split())


# -- render --------------------------------------------------------------------------------------------------


def test_relative_and_absolute_times_at_a_fixed_now() -> None:
    assert page.relative(NOW - 12, NOW) == "12 s ago"
    assert page.relative(NOW + 40, NOW) == "in 40 s"
    assert page.relative(NOW - 0.4, NOW) == "now"
    assert page.relative(NOW - 150, NOW) == "2 min ago"
    assert page.relative(NOW - 7500, NOW) == "2 h 5 min ago"
    assert page.relative(NOW - 3 * 86400 - 7200, NOW) == "3 d 2 h ago"
    assert page.utc(0) == "1970-01-01 00:00:00 UTC"
    assert page.utc(NOW) == "2026-05-28 20:26:40 UTC"
    assert squeeze(dom(full_status()).one(id="last-reconcile").text()).startswith(
        "failed · 12 s ago (2026-05-28 20:26:28 UTC) · took 1.2 s"
    )


def test_a_repo_shows_revision_reconcile_versions_counts_and_its_failed_tenants() -> None:
    repo = dom(full_status()).one(id="repo-app")
    assert "git:0123456789abcdef" in repo.one(class_="revision").text()
    reconcile = squeeze(repo.one(class_="last-reconcile").text())
    assert reconcile.startswith("failed · 12 s ago (2026-05-28 20:26:28 UTC)")
    errors = [squeeze(li.text()) for li in repo.one(class_="reconcile-errors").find(tag="li")]
    assert errors == ["app: tenant rollout held by canaries"]  # another repo's error is not this repo's
    versions = repo.one(class_="global-version")
    assert squeeze(versions.text()) == "applied 20260101000000 · latest 20260102000000 (behind)"
    counts = {n.attrs["data-count"]: n.one(class_="value").text() for n in repo.find(class_="count")}
    assert counts == {"current": "3", "behind": "0", "failed": "2", "total": "5"}
    rows = repo.find(class_="failure")
    assert [r.attrs["data-tenant"] for r in rows] == ["org_a", "org_b"]  # canaries first
    canary, other = rows
    assert canary.attrs["data-canary"] == "true" and canary.find(class_="canary-marker")
    assert canary.one(class_="error").text() == f"check violated {SCRIPT} & more"
    assert canary.one(class_="failures").text() == "3"
    assert squeeze(canary.one(class_="since").text()) == "2 h 5 min ago (2026-05-28 18:21:40 UTC)"
    assert canary.one(class_="next-retry").text() == "due"
    assert other.attrs["data-canary"] == "false" and not other.find(class_="canary-marker")
    assert squeeze(other.one(class_="next-retry").text()) == "in 40 s (2026-05-28 20:27:20 UTC)"


def test_banners_for_canary_hold_problems_and_not_ready() -> None:
    doc = dom(full_status())
    hold = squeeze(doc.one(id="canary-hold").text())
    assert "app: failing canary tenant org_a holds the other tenants back" in hold
    problems = doc.one(id="problems")
    assert "the last good configuration stays applied" in problems.text()
    assert "+dirty.89abcdef" in problems.text()  # which edit was rejected
    assert squeeze(problems.one(class_="problem").text()) == (
        "config/accounts.yaml:9 spec.attributes[1].type: unknown type"
    )
    assert doc.one(id="ready-reason").text() == "2 tenants of app failed"
    assert doc.one(id="summary").attrs["data-ready"] == "false"
    assert doc.one(tag="title").text() == "orchestrator: NOT READY, 2 failed tenants, config rejected"


def test_rollouts_newest_first_events_newest_first_and_jobs() -> None:
    doc = dom(full_status())
    rollouts = doc.one(id="rollouts").find(class_="rollout")
    assert [r.attrs["data-rollout"] for r in rollouts] == ["new2", "old1"]
    newest = squeeze(rollouts[0].text())
    assert "failed (dry run)" in newest and "1 min ago" in newest and "a canary <failed>" in newest
    assert "all repos" in rollouts[1].text() and "1 d 1 h ago" in rollouts[1].text()
    events = doc.one(id="events").find(class_="event")
    assert [e.attrs["data-event"] for e in events] == ["target.failed", "attempt.retrying"]
    assert events[0].attrs["data-level"] == "error" and events[1].attrs["data-level"] == "warning"
    assert events[0].one(class_="detail").text() == SCRIPT
    jobs = {n.attrs["data-job"]: squeeze(n.text()) for n in doc.one(id="jobs").find(class_="job")}
    assert jobs["reconcile"].startswith("reconcile: last finished 12 s ago")
    assert jobs["tenants"] == "tenants: running for 4 s"


def test_everything_from_the_status_is_escaped() -> None:
    status = full_status()
    status["revision"] = '"><script>alert(1)</script>'
    status["repos"][0]["name"] = 'a"b<i>'
    status["repos"][0]["failures"][0]["tenant"] = "x' onmouseover='alert(1)"
    status["repos"][0]["tenants_failed"] = ["x' onmouseover='alert(1)", "org_a"]
    status["problems"][0]["message"] = "</li><script>alert(2)</script>"
    html = page.render(status, NOW)
    assert "<script" not in html.lower() and "<i>" not in html
    doc = dom(status)
    assert not doc.find(tag="script")
    assert doc.one(id="revision").text() == '"><script>alert(1)</script>'
    repo = doc.one(tag="section", data_repo='a"b<i>')
    assert repo.attrs["id"] == 'repo-a"b<i>'
    assert [r.attrs["data-tenant"] for r in repo.find(class_="failure")][1] == "x' onmouseover='alert(1)"
    assert doc.one(class_="problem").one(class_="message").text() == "</li><script>alert(2)</script>"


def test_missing_keys_and_odd_values_show_as_unknown() -> None:
    doc = dom({})
    assert doc.one(id="not-ready").one(id="ready-reason").text() == "no reason given"
    assert doc.one(id="revision").text() == page.UNKNOWN
    assert "none yet" in doc.one(id="last-reconcile").text()
    assert not doc.find(id="problems") and not doc.find(id="canary-hold")
    odd: dict[str, Any] = {
        "ready": True,
        "problems": None,
        "last_reconcile": {"at": "yesterday", "ok": None, "errors": None},
        "repos": [{}, {"name": "app", "tenants": True, "failures": [None, {"tenant": "t1", "since": float("inf")}]}],
        "rollouts": [None, {"id": "r1"}],
        "recent_events": "not a list",
        "jobs": None,
    }
    doc = dom(odd)
    assert not doc.find(id="not-ready")
    assert squeeze(doc.one(id="last-reconcile").text()).startswith(f"{page.UNKNOWN} · {page.UNKNOWN}")
    app = doc.one(id="repo-app")
    assert app.one(data_count="total").one(class_="value").text() == page.UNKNOWN
    assert app.one(data_count="failed").one(class_="value").text() == "1"
    row = app.one(data_tenant="t1")
    assert row.one(class_="since").text() == page.UNKNOWN and row.one(class_="error").text() == page.UNKNOWN
    assert doc.one(data_rollout="r1")


def test_an_older_status_lists_failed_tenants_without_failure_records() -> None:
    """``tenants_failed`` without ``failures`` (the daemon before the service rewrite): the rows still show."""
    doc = dom({"ready": False, "repos": [{"name": "app", "tenants": 3, "tenants_failed": ["bad"]}]})
    row = doc.one(id="repo-app").one(data_tenant="bad")
    assert row.one(class_="error").text() == page.UNKNOWN
    assert doc.one(id="repo-app").one(data_count="current").one(class_="value").text() == page.UNKNOWN


def test_a_healthy_daemon_shows_no_banners_and_the_page_refreshes_itself_without_scripts() -> None:
    status = full_status()
    status |= {"ready": True, "config_valid": True, "problems": [], "ready_reason": None}
    status["repos"][0] |= {"failures": [], "tenants_failed": [], "held_by_canary": [], "global_version": 20260102000000}
    doc = dom(status)
    assert not doc.find(id="not-ready") and not doc.find(id="problems") and not doc.find(id="canary-hold")
    assert doc.one(id="repo-app").one(class_="no-failures")
    assert squeeze(doc.one(id="repo-app").one(class_="global-version").text()).endswith("latest 20260102000000")
    assert doc.one(tag="title").text() == "orchestrator: ready"
    refresh = doc.one(tag="meta", http_equiv="refresh")
    assert refresh.attrs["content"] == str(page.REFRESH_S)
    assert not doc.find(tag="script")


# -- in Chromium -------------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Debian's headless Chromium (as root it needs --no-sandbox), a fresh profile, a 1280 px wide window."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"missing {missing}: apt-get install -y chromium chromium-driver (as .ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=DriverService(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def on_one_rendering(driver: webdriver.Chrome, look: Callable[[], T | None], what: str, *, timeout: float = 60) -> T:
    """``look`` at the page, on one rendering of it: the page reloads itself every few seconds, so a look that
    met a reload (a stale element, or the footer's render time changed meanwhile) is taken again, as is one that
    found nothing truthy yet; fails after ``timeout`` s."""

    def once() -> T | None:
        try:
            before = driver.find_element(By.TAG_NAME, "footer").get_attribute("data-rendered")
            found = look()
            after = driver.find_element(By.TAG_NAME, "footer").get_attribute("data-rendered")
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):  # chromedriver's other word for a stale element
                return None
            raise
        return found if before == after else None

    found = wait_for(
        once, what, timeout=timeout, interval=0.2, ignore=(StaleElementReferenceException, NoSuchElementException)
    )
    assert found is not None
    return found


def visible(element: WebElement) -> str:
    """What a person reads in ``element``; fails when it is not displayed."""
    assert element.is_displayed(), element.get_attribute("outerHTML")
    return str(element.text)


def text_of(driver: webdriver.Chrome, css: str) -> str:
    return visible(driver.find_element(By.CSS_SELECTOR, css))


def counts(driver: webdriver.Chrome, repo: str) -> dict[str, str]:
    """The tenant counts a person reads in a repo's section: current, behind, failed, total."""
    found = driver.find_elements(By.CSS_SELECTOR, f"#repo-{repo} [data-count]")
    return {str(e.get_attribute("data-count")): visible(e.find_element(By.CSS_SELECTOR, ".value")) for e in found}


ROW_CELLS = ("tenant", "error", "failures", "since", "next-retry")


def failure_row(driver: webdriver.Chrome, repo: str, tenant: str) -> dict[str, str] | None:
    """The cells of a failed tenant's row as a person reads them (``canary`` when marked), or None."""
    rows = driver.find_elements(By.CSS_SELECTOR, f'#repo-{repo} tr.failure[data-tenant="{tenant}"]')
    if not rows:
        return None
    cells = {cell: visible(rows[0].find_element(By.CSS_SELECTOR, f".{cell}")) for cell in ROW_CELLS}
    markers = rows[0].find_elements(By.CSS_SELECTOR, ".canary-marker")
    return cells | {"canary": visible(markers[0]) if markers else ""}


def test_in_chromium_a_static_page_reads_right_lays_out_and_refreshes_itself(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    status = full_status()
    status["repos"][0]["failures"][0]["error"] = "ERROR: " + "x" * 600 + " (one unbroken word)"
    target = tmp_path / "page.html"
    target.write_text(page.render(status, NOW))
    browser.get(target.as_uri())

    def look() -> dict[str, Any]:
        error = browser.find_element(By.CSS_SELECTOR, '#repo-app tr.failure[data-tenant="org_b"] .error')
        return {
            "title": browser.title,
            "canary": failure_row(browser, "app", "org_a"),
            "counts": counts(browser, "app"),
            "hold": text_of(browser, "#canary-hold"),
            "hold above repo": browser.find_element(By.ID, "canary-hold").location["y"]
            < browser.find_element(By.ID, "repo-app").location["y"],
            "problems": text_of(browser, "#problems"),
            "reconcile": text_of(browser, "#last-reconcile"),
            "long error": visible(error),
            "long error right": error.rect["x"] + error.rect["width"],
            "width": browser.execute_script("return document.documentElement.clientWidth"),
            "scroll width": browser.execute_script("return document.documentElement.scrollWidth"),
            "pwned": browser.execute_script("return window.pwned === undefined ? null : window.pwned"),
        }

    seen = on_one_rendering(browser, look, "the static page")
    assert seen["title"] == "orchestrator: NOT READY, 2 failed tenants, config rejected"
    assert seen["canary"] == {
        "tenant": "org_a canary",
        "error": f"check violated {SCRIPT} & more",
        "failures": "3",
        "since": "2 h 5 min ago (2026-05-28 18:21:40 UTC)",
        "next-retry": "due",
        "canary": "canary",
    }
    assert seen["pwned"] is None  # the tenant error's script is shown as text, never run
    assert seen["counts"] == {"current": "3", "behind": "0", "failed": "2", "total": "5"}
    assert "org_a holds the other tenants back" in seen["hold"] and seen["hold above repo"]
    assert "config/accounts.yaml:9 spec.attributes[1].type: unknown type" in seen["problems"]
    assert "the last good configuration stays applied" in seen["problems"]
    assert seen["reconcile"].startswith("failed · 12 s ago (2026-05-28 20:26:28 UTC)")
    # a long database error wraps inside the window instead of widening the page
    assert seen["long error"].endswith("(one unbroken word)")
    assert seen["long error right"] <= seen["width"] and seen["scroll width"] <= seen["width"]

    status["repos"][0] |= {"failures": [], "tenants_failed": [], "held_by_canary": [], "tenants_current": 5}
    status |= {"ready": True, "problems": [], "config_valid": True}
    target.write_text(page.render(status, NOW + 5))

    def fixed() -> dict[str, Any] | None:
        if browser.title != "orchestrator: ready":
            return None
        return {
            "rows": len(browser.find_elements(By.CSS_SELECTOR, "tr.failure")),
            "none": text_of(browser, "#repo-app .no-failures"),
            "counts": counts(browser, "app"),
            "banners": browser.find_elements(By.CSS_SELECTOR, "#canary-hold, #not-ready, #problems"),
        }

    seen = on_one_rendering(browser, fixed, "the page to reload itself with the fix")
    assert seen["rows"] == 0 and seen["none"] == "No failed tenants." and not seen["banners"]
    assert seen["counts"] == {"current": "5", "behind": "0", "failed": "0", "total": "5"}


REFUSE_NOTES_IN_BAD = """
CREATE FUNCTION public.refuse_bad_notes() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() WHERE object_identity = 'bad.notes') THEN
    RAISE EXCEPTION 'bad.notes refused: <script>window.pwned = 1</script>';
  END IF;
END $$;
CREATE EVENT TRIGGER refuse_bad_notes ON ddl_command_end EXECUTE FUNCTION public.refuse_bad_notes();
"""
"""The tenant migration fails in tenant ``bad`` only (its CREATE TABLE), with markup in the database's error."""

REFUSED = "bad.notes refused: <script>window.pwned = 1</script>"


def failed_event(driver: webdriver.Chrome, tenant: str) -> str | None:
    """The detail of a displayed ``target.failed`` event of ``tenant`` among the recent events, if any."""
    for row in driver.find_elements(By.CSS_SELECTOR, '#events tr[data-event="target.failed"]'):
        cells = row.find_elements(By.TAG_NAME, "td")
        if visible(cells[3]) == tenant:
            return visible(cells[4])
    return None


@pytest.mark.slow
def test_in_chromium_a_daemon_shows_a_failing_tenant_until_it_is_fixed(
    browser: webdriver.Chrome, tmp_path: Path, database_url: str
) -> None:
    manifests(tmp_path / "config")
    running = Daemon(tmp_path, database_url, tmp_path / "config")
    try:
        register(database_url, "acme", "globex")
        eventually(lambda: columns(database_url, "globex", "notes") == ["id"])
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(REFUSE_NOTES_IN_BAD)
        register(database_url, "bad")
        eventually(lambda: "bad" in running.get("/status")[1]["repos"][0]["tenants_failed"])

        browser.get(f"http://127.0.0.1:{running.port}/")

        def failing() -> dict[str, Any] | None:
            event, cells = failed_event(browser, "bad"), failure_row(browser, "app", "bad")
            if event is None or cells is None:
                return None
            return {
                "title": browser.title,
                "state": text_of(browser, "#state"),
                "not ready": browser.find_elements(By.ID, "not-ready"),
                "revision": text_of(browser, "#revision"),
                "repo": text_of(browser, "#repo-app h3"),
                "reconcile": text_of(browser, "#last-reconcile"),
                "event": event,
                "row": cells,
                "counts": counts(browser, "app"),
                "pwned": browser.execute_script("return window.pwned === undefined ? null : window.pwned"),
            }

        seen = on_one_rendering(browser, failing, "the failed tenant's row and event")
        # a failing tenant is shown, and does not make the daemon (or the app beside it) look not ready
        assert seen["title"] == "orchestrator: ready, 1 failed tenant" and seen["state"] == "Ready"
        assert not seen["not ready"]
        assert re.fullmatch(r"(git|sha256):\w+", seen["revision"]) and seen["repo"].startswith("app")
        assert re.search(r"(\d+ (s|min) ago|now) \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", seen["reconcile"])
        assert REFUSED in seen["event"] and seen["pwned"] is None
        assert REFUSED in seen["row"]["error"] and int(seen["row"]["failures"]) >= 1
        assert re.fullmatch(r"(in \d+ .+|now .+|due)", seen["row"]["next-retry"]), seen["row"]
        assert (seen["counts"]["failed"], seen["counts"]["current"]) == ("1", "2")

        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP EVENT TRIGGER refuse_bad_notes")

        def fixed() -> dict[str, Any] | None:
            if browser.find_elements(By.ID, "not-ready") or failure_row(browser, "app", "bad"):
                return None
            return {"title": browser.title, "state": text_of(browser, "#state"), "counts": counts(browser, "app")}

        seen = on_one_rendering(browser, fixed, "the page to show the tenant fixed", timeout=120)
        assert seen["title"] == "orchestrator: ready" and seen["state"] == "Ready"
        assert columns(database_url, "bad", "notes") == ["id"]
        assert (seen["counts"]["failed"], seen["counts"]["current"]) == ("0", "3")
    finally:
        code, err = running.stop()
        assert code == 0, err[-4000:]
