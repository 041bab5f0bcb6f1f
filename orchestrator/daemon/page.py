"""The status page an operator keeps open: one HTML document rendered from the ``/status`` dict.

Why plain server-rendered HTML: the page must read the same in any browser, through any proxy, with scripts
off, and must show exactly what ``/status`` says, so it is a pure function of that dict and ``now`` (which also
makes it testable with a fixed clock). It refreshes itself with ``<meta http-equiv="refresh">`` so a tab left
open stays current without JavaScript.

Why so defensive: the status carries outside text (tenant names, database errors, manifest messages), so every
value is HTML-escaped; and any key may be missing or None (a daemon that has not finished its first job, an
older or newer daemon), so what is unknown shows as "—" instead of breaking the page an operator needs most
when things are wrong.

The ids, classes and data attributes (``id="repo-<name>"``, ``data-tenant``, ``id="problems"``,
``id="canary-hold"``, ``data-count``, ...) are the page's contract with its browser test and with scrapers.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from typing import Any

REFRESH_S = 5
"""How often the page reloads itself."""

MAX_ROLLOUTS = 10
MAX_EVENTS = 20

UNKNOWN = "—"

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;padding:0 1rem 2rem;max-width:80rem;color:#1b1f23}
h1{font-size:1.4rem;margin:.8rem 0 .3rem}h2{font-size:1.15rem;margin:1.4rem 0 .4rem}h3{margin:.2rem 0 .4rem}
code,pre{font:12px/1.4 ui-monospace,monospace}
pre{margin:0;white-space:pre-wrap;overflow-wrap:anywhere}
td,dd,li,p{overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #d0d7de;padding:.25rem .45rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1rem;margin:.3rem 0}dt{font-weight:600}dd{margin:0}
.banner{border-radius:6px;padding:.6rem .9rem;margin:.7rem 0}
.ok{color:#1a7f37}.bad,.failed{color:#cf222e}.behind{color:#9a6700}
.banner.bad{background:#ffebe9;border:1px solid #cf222e;color:inherit}.banner.bad b{color:#cf222e}
.banner.warn{background:#fff8c5;border:1px solid #bf8700}
header.ok,header.bad{color:inherit}
.repo{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .9rem;margin:.8rem 0}
.repo.has-failures{border-color:#cf222e}
.canary-marker{background:#8250df;color:#fff;border-radius:3px;padding:0 .3rem;font-size:11px;margin-left:.3rem}
.abs{color:#57606a;font-size:12px}
footer{margin-top:2rem;color:#57606a;font-size:12px}
"""


# -- values ------------------------------------------------------------------------------------------------


def esc(value: object) -> str:
    """Text (or an attribute value) safe to put into HTML: every ``<``, ``>``, ``&`` and quote escaped."""
    return html.escape(str(value), quote=True)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    """A finite number, or None for anything else (bools included: a flag is not a time or a count)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _or_unknown(value: Any) -> str:
    return UNKNOWN if value is None or value == "" else esc(value)


def span(seconds: float) -> str:
    """A length of time for people: "12 s", "4 min", "2 h 5 min", "3 d 4 h"."""
    whole = int(abs(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def relative(at: float, now: float) -> str:
    """``at`` seen from ``now``: "12 s ago", "in 40 s", or "now" within a second."""
    delta = now - at
    if abs(delta) < 1:
        return "now"
    return f"{span(delta)} ago" if delta > 0 else f"in {span(delta)}"


def utc(at: float) -> str:
    """The absolute time in UTC, to the second (the raw number when it is no representable time)."""
    try:
        return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(at)


def when(at: Any, now: float) -> str:
    """A moment as relative time plus absolute UTC time, in a ``<time>`` element; "—" when unknown."""
    moment = _num(at)
    if moment is None:
        return UNKNOWN
    absolute = utc(moment)
    iso = absolute.replace(" UTC", "Z").replace(" ", "T")
    return (
        f'<time datetime="{esc(iso)}" title="{esc(absolute)}">{esc(relative(moment, now))}</time> '
        f'<span class="abs">({esc(absolute)})</span>'
    )


def duration(seconds: Any) -> str:
    value = _num(seconds)
    if value is None:
        return UNKNOWN
    return f"{value:.1f} s" if value < 60 else span(value)


def _flag(value: bool) -> str:
    return "true" if value else "false"


# -- sections ----------------------------------------------------------------------------------------------


def _title(status: dict[str, Any], repos: list[dict[str, Any]]) -> str:
    """The tab's title says the state, so a tab among many shows trouble without being looked at."""
    failed = sum(len(_failed_names(repo)) for repo in repos)
    parts = ["ready" if status.get("ready") else "NOT READY"]
    if failed:
        parts.append(f"{failed} failed tenant{'s' if failed != 1 else ''}")
    if status.get("config_valid") is False or _list(status.get("problems")):
        parts.append("config rejected")
    return f"orchestrator: {', '.join(parts)}"


def _reconcile(last: dict[str, Any], now: float, repo: str | None = None) -> str:
    """The last reconcile: ok or failed, when, how long, and its errors (those of ``repo`` when given)."""
    if not last:
        return f'<span class="last-reconcile">{UNKNOWN} (none yet)</span>'
    ok = last.get("ok")
    state = "ok" if ok else "failed" if ok is False else UNKNOWN
    css = "ok" if ok else "failed" if ok is False else ""
    errors = [str(e) for e in _list(last.get("errors"))]
    if repo is not None:
        errors = [e for e in errors if e.startswith(f"{repo}:")]
    items = "".join(f"<li><pre>{esc(e)}</pre></li>" for e in errors)
    return (
        f'<span class="last-reconcile" data-ok="{esc(state)}"><b class="{css}">{esc(state)}</b> · '
        f"{when(last.get('at'), now)} · took {duration(last.get('seconds'))} · revision "
        f"<code>{_or_unknown(last.get('revision'))}</code></span>"
        + (f'<ul class="reconcile-errors">{items}</ul>' if items else "")
    )


def _job(name: str, job: dict[str, Any], now: float) -> str:
    running = _num(job.get("running_for"))
    if running is not None:
        state = f"running for {esc(span(running))}"
    else:
        state = f"last finished {when(job.get('last_finished'), now)}"
    return f'<span class="job" data-job="{esc(name)}">{esc(name)}: {state}</span>'


def _summary(status: dict[str, Any], now: float) -> str:
    ready = bool(status.get("ready"))
    jobs = _dict(status.get("jobs"))
    job_line = " · ".join(_job(name, _dict(job), now) for name, job in jobs.items()) or UNKNOWN
    config = "valid" if status.get("config_valid") is not False else "rejected edit (see below)"
    return (
        f'<header id="summary" class="{"ok" if ready else "bad"}" data-ready="{_flag(ready)}">'
        f"<h1>orchestrator</h1>"
        f'<p id="state" class="{"ok" if ready else "bad"}"><b>{"Ready" if ready else "Not ready"}</b></p>'
        "<dl>"
        f'<dt>Live revision</dt><dd><code id="revision">{_or_unknown(status.get("revision"))}</code></dd>'
        f'<dt>Configuration</dt><dd id="config-state">{esc(config)}</dd>'
        f'<dt>Last reconcile</dt><dd id="last-reconcile">{_reconcile(_dict(status.get("last_reconcile")), now)}</dd>'
        f'<dt>Last success</dt><dd id="last-success">{when(status.get("last_success"), now)}</dd>'
        f'<dt>Jobs</dt><dd id="jobs">{job_line}</dd>'
        "</dl></header>"
    )


def _not_ready(status: dict[str, Any]) -> str:
    """Why the daemon is not ready (what /readyz answers 503 for), and whether it has not started yet."""
    if status.get("ready"):
        return ""
    reason = status.get("ready_reason")
    starting = (
        '<p id="starting">Starting: the global migrations of every repo have not all been applied since the daemon '
        "started.</p>"
        if status.get("started") is False
        else ""
    )
    return (
        '<section id="not-ready" class="banner bad" role="alert"><b>Not ready</b>: '
        f'<span id="ready-reason">{_or_unknown(reason) if reason is not None else "no reason given"}</span>'
        f"{starting}</section>"
    )


def _canary_hold(repos: list[dict[str, Any]]) -> str:
    """One banner at the top when failing canaries hold any repo's rollout back: the other tenants wait."""
    held = [(repo, [str(t) for t in _list(repo.get("held_by_canary"))]) for repo in repos]
    items = "".join(
        f'<li data-repo="{esc(repo.get("name", ""))}">{esc(repo.get("name", UNKNOWN))}: failing canary '
        f"tenant{'s' if len(tenants) != 1 else ''} {', '.join(f'<code>{esc(t)}</code>' for t in tenants)} "
        f"hold{'' if len(tenants) != 1 else 's'} the other tenants back until "
        f"{'they succeed' if len(tenants) != 1 else 'it succeeds'}</li>"
        for repo, tenants in held
        if tenants
    )
    if not items:
        return ""
    return (
        '<section id="canary-hold" class="banner bad" role="alert"><b>Rollout held by canaries</b>'
        f"<ul>{items}</ul></section>"
    )


def _problem(problem: dict[str, Any]) -> str:
    file, line = problem.get("file"), problem.get("line")
    where = f"{file}:{line}" if file and _num(line) is not None else str(file or UNKNOWN)
    field = problem.get("field")
    return (
        f'<li class="problem" data-file="{esc(file or "")}" data-line="{esc("" if line is None else line)}">'
        f'<code class="where">{esc(where)}</code> '
        + (f'<code class="field">{esc(field)}</code>: ' if field else "")
        + f'<span class="message">{esc(problem.get("message") or "")}</span></li>'
    )


def _problems(status: dict[str, Any]) -> str:
    """The located errors of a rejected edit, and the reassurance that nothing of it was applied."""
    problems = [_dict(p) for p in _list(status.get("problems"))]
    if not problems and status.get("config_valid") is not False:
        return ""
    rejected = status.get("rejected_revision")
    which = f" (revision <code>{esc(rejected)}</code>)" if rejected else ""
    live = f" (revision <code>{esc(status['revision'])}</code>)" if status.get("revision") else ""
    return (
        f'<section id="problems" class="banner warn"><h2>Configuration rejected</h2>'
        f"<p>The edited configuration{which} is invalid and was not applied; "
        f"the last good configuration stays applied{live}.</p>"
        f"<ul>{''.join(_problem(p) for p in problems)}</ul></section>"
    )


def _failed_names(repo: dict[str, Any]) -> list[str]:
    """Every failed tenant of a repo: those with a failure record, then any other the repo lists as failed."""
    names = [str(_dict(f).get("tenant")) for f in _list(repo.get("failures")) if _dict(f).get("tenant") is not None]
    return names + [str(t) for t in _list(repo.get("tenants_failed")) if str(t) not in names]


def _failure_row(failure: dict[str, Any], now: float) -> str:
    tenant = str(failure.get("tenant", UNKNOWN))
    canary = bool(failure.get("canary"))
    retry = _num(failure.get("next_retry"))
    if retry is None:
        next_retry = UNKNOWN
    elif retry <= now:
        next_retry = "due"
    else:
        next_retry = when(retry, now)
    marker = ' <span class="canary-marker" title="canary tenant">canary</span>' if canary else ""
    error = failure.get("error")
    count = failure.get("failures")
    return (
        f'<tr class="failure" data-tenant="{esc(tenant)}" data-canary="{_flag(canary)}">'
        f'<td class="tenant"><code>{esc(tenant)}</code>{marker}</td>'
        f'<td class="error"><pre>{esc(error) if error else UNKNOWN}</pre></td>'
        f'<td class="failures">{esc(count) if _num(count) is not None else UNKNOWN}</td>'
        f'<td class="since">{when(failure.get("since"), now)}</td>'
        f'<td class="next-retry">{next_retry}</td></tr>'
    )


def _failures(repo: dict[str, Any], now: float) -> str:
    """The failed tenants of a repo, canaries first: each one's error, failure count and next retry."""
    records = [f for f in map(_dict, _list(repo.get("failures"))) if f.get("tenant") is not None]
    known = {str(r.get("tenant")) for r in records}
    records += [{"tenant": t} for t in _failed_names(repo) if t not in known]
    if not records:
        return '<p class="no-failures ok">No failed tenants.</p>'
    records.sort(key=lambda r: (not r.get("canary"), str(r.get("tenant"))))
    rows = "".join(_failure_row(r, now) for r in records)
    return (
        f'<table class="failures" id="failures-{esc(repo.get("name", ""))}"><caption>Failed tenants</caption>'
        "<thead><tr><th>Tenant</th><th>Error</th><th>Failures</th><th>Failing since</th><th>Next retry</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
    )


def _count(kind: str, value: Any) -> str:
    """One tenant count; failed or behind tenants, when there are any, in colour."""
    number = _num(value)
    shown = esc(int(number)) if number is not None else UNKNOWN
    alarm = {"failed": " bad", "behind": " behind"}.get(kind, "") if number else ""
    return f'<span class="count{alarm}" data-count="{kind}"><b class="value">{shown}</b> {kind}</span>'


def _versions(applied: Any, latest: Any) -> str:
    """Applied against latest global version: "behind" when they differ."""
    if _num(applied) is None and _num(latest) is None:
        return UNKNOWN
    state = "" if _num(applied) is None or _num(latest) is None else "current" if applied == latest else "behind"
    return (
        f'<span class="{state}" data-state="{state}">applied <code>{_or_unknown(applied)}</code> · latest '
        f"<code>{_or_unknown(latest)}</code>{' (behind)' if state == 'behind' else ''}</span>"
    )


def _repo_banners(repo: dict[str, Any]) -> str:
    """A repo-level error (the database unreachable, say) and the canaries holding this repo back."""
    name, last_error = str(repo.get("name", "")), repo.get("last_error")
    held = [str(t) for t in _list(repo.get("held_by_canary"))]
    error = (
        f'<p class="repo-error banner bad">Error: <span class="message">{esc(last_error)}</span></p>'
        if last_error
        else ""
    )
    hold = (
        f'<p class="canary-hold banner bad" data-repo="{esc(name)}">Held by failing canaries: '
        f"{esc(', '.join(held))}</p>"
        if held
        else ""
    )
    return error + hold


def _repo_facts(repo: dict[str, Any], status: dict[str, Any], now: float) -> str:
    """Revision, last reconcile, versions and tenant counts of one repo."""
    name = str(repo.get("name", ""))
    failed = _failed_names(repo)
    failed_count = len(failed) if failed or "tenants_failed" in repo or "failures" in repo else None
    return (
        "<dl>"
        f'<dt>Live revision</dt><dd class="revision"><code>{_or_unknown(status.get("revision"))}</code></dd>'
        f"<dt>Last reconcile</dt><dd>{_reconcile(_dict(status.get('last_reconcile')), now, name)}</dd>"
        '<dt>Global version</dt><dd class="global-version">'
        f"{_versions(repo.get('global_version'), repo.get('latest_version'))}</dd>"
        '<dt>Tenant version</dt><dd class="tenant-version">latest <code>'
        f"{_or_unknown(repo.get('latest_tenant_version'))}</code></dd>"
        f'<dt>Tenants</dt><dd class="counts">{_count("current", repo.get("tenants_current"))} · '
        f"{_count('behind', repo.get('tenants_behind'))} · {_count('failed', failed_count)} · "
        f"of {_count('total', repo.get('tenants'))}</dd>"
        "</dl>"
    )


def _repo(repo: dict[str, Any], status: dict[str, Any], now: float) -> str:
    name, source = str(repo.get("name", UNKNOWN)), repo.get("tenant_source")
    trouble = bool(_failed_names(repo) or repo.get("last_error"))
    about = f"database <code>{_or_unknown(repo.get('database'))}</code>" + (
        f" · tenants from {esc(source)}" if source else " · no tenants"
    )
    return (
        f'<section class="repo{" has-failures" if trouble else ""}" id="repo-{esc(name)}" data-repo="{esc(name)}">'
        f"<h3>{esc(name)} <small>{about}</small></h3>"
        f"{_repo_banners(repo)}{_repo_facts(repo, status, now)}{_failures(repo, now)}{_drift(repo, now)}</section>"
    )


def _drift_row(target: dict[str, Any]) -> str:
    shown = [str(line) for line in _list(target.get("differences"))]
    count = _num(target.get("differences_count"))
    more = int(count) - len(shown) if count is not None and count > len(shown) else 0
    lines = "\n".join(shown) + (f"\n… and {more} more" if more else "")
    return (
        f'<tr class="drifted" data-target="{esc(target.get("target", ""))}">'
        f'<td class="target"><code>{esc(target.get("target", UNKNOWN))}</code></td>'
        f'<td class="version"><code>{_or_unknown(target.get("version"))}</code></td>'
        f'<td class="differences"><pre>{esc(lines)}</pre></td></tr>'
    )


def _drift(repo: dict[str, Any], now: float) -> str:
    """The last drift check of a repo: drifted targets with their differences, and a check that failed."""
    drift = _dict(repo.get("drift"))
    if not drift:
        return '<p class="drift unknown">Drift: not checked yet.</p>'
    error = drift.get("error")
    failed = (
        f'<p class="drift-error banner bad">Drift check failed {when(drift.get("failed_at"), now)}: '
        f'<span class="message">{esc(error)}</span></p>'
        if error
        else ""
    )
    targets = [_dict(t) for t in _list(drift.get("targets"))]
    drifted, checked = _num(drift.get("drifted")), _num(drift.get("targets_checked"))
    missing = [str(m) for m in _list(drift.get("missing_tenants"))]
    gone = f" Tenant schemas missing: {esc(', '.join(missing))}." if missing else ""
    if drifted is None:
        return f'<section class="drift">{failed}</section>'
    summary = (
        f'<p class="drift-summary{" bad" if drifted else " ok"}" data-drifted="{esc(int(drifted))}">'
        f"Drift: {esc(int(drifted))} of {_or_unknown(checked if checked is None else int(checked))} targets "
        f"drifted (checked {when(drift.get('checked_at'), now)}).{gone}</p>"
    )
    if not targets:
        return f'<section class="drift">{failed}{summary}</section>'
    hidden = int(drifted) - len(targets)
    rows = "".join(_drift_row(t) for t in targets)
    more = f'<p class="drift-more">… and {hidden} more drifted targets.</p>' if hidden > 0 else ""
    return (
        f'<section class="drift">{failed}{summary}<table class="drift" id="drift-{esc(repo.get("name", ""))}">'
        "<caption>Drifted targets</caption><thead><tr><th>Target</th><th>Model at</th><th>Differences</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>{more}</section>"
    )


def _repos(status: dict[str, Any], repos: list[dict[str, Any]], now: float) -> str:
    body = "".join(_repo(r, status, now) for r in repos) or "<p>No repos configured (or none loaded yet).</p>"
    return f'<section id="repos"><h2>Repos</h2>{body}</section>'


def _rollout_row(rollout: dict[str, Any], now: float) -> str:
    state = str(rollout.get("status", UNKNOWN))
    tenants = rollout.get("tenants")
    tenant_text = ", ".join(str(t) for t in tenants) if isinstance(tenants, list) else "all"
    error = rollout.get("error")
    return (
        f'<tr class="rollout" data-rollout="{esc(rollout.get("id", ""))}" data-status="{esc(state)}">'
        f"<td><code>{_or_unknown(rollout.get('id'))}</code></td>"
        f"<td>{esc(rollout.get('repo') or 'all repos')}</td><td>{esc(tenant_text)}</td>"
        f'<td class="status {esc(state)}">{esc(state)}{" (dry run)" if rollout.get("dry_run") else ""}</td>'
        f"<td>{when(rollout.get('created'), now)}</td><td>{when(rollout.get('finished'), now)}</td>"
        f'<td class="error"><pre>{esc(error) if error else ""}</pre></td></tr>'
    )


def _rollouts(rollouts: list[Any], now: float) -> str:
    """The most recent ops-triggered rollouts, newest first."""
    records = [_dict(r) for r in rollouts]
    records.sort(key=lambda r: _num(r.get("created")) or 0.0, reverse=True)
    rows = "".join(_rollout_row(r, now) for r in records[:MAX_ROLLOUTS])
    if not rows:
        return '<section id="rollouts"><h2>Recent rollouts</h2><p>None since the daemon started.</p></section>'
    return (
        '<section id="rollouts"><h2>Recent rollouts</h2><table><thead><tr><th>Id</th><th>Repo</th><th>Tenants</th>'
        f"<th>Status</th><th>Created</th><th>Finished</th><th>Error</th></tr></thead><tbody>{rows}</tbody></table>"
        "</section>"
    )


EVENT_KEYS = ("at", "event", "repo", "tenant", "level")


def _event_row(event: dict[str, Any], now: float) -> str:
    name = str(event.get("event", UNKNOWN))
    level = str(event.get("level") or ("error" if "fail" in name or "error" in name else "warning"))
    detail = event.get("error") or "; ".join(
        f"{k}={v}" for k, v in event.items() if k not in EVENT_KEYS and v not in (None, "", [], {})
    )
    return (
        f'<tr class="event {esc(level)}" data-event="{esc(name)}" data-level="{esc(level)}">'
        f"<td>{when(event.get('at'), now)}</td><td><code>{esc(name)}</code></td>"
        f"<td>{_or_unknown(event.get('repo'))}</td><td>{_or_unknown(event.get('tenant'))}</td>"
        f'<td class="detail"><pre>{esc(detail)}</pre></td></tr>'
    )


def _events(events: list[Any], now: float) -> str:
    """The recent warnings and errors (retries, abandoned connections, failures), newest first."""
    records = [_dict(e) for e in events][-MAX_EVENTS:]
    rows = "".join(_event_row(e, now) for e in reversed(records))
    if not rows:
        return '<section id="events"><h2>Recent warnings and errors</h2><p>None.</p></section>'
    return (
        '<section id="events"><h2>Recent warnings and errors</h2><table><thead><tr><th>When</th><th>Event</th>'
        f"<th>Repo</th><th>Tenant</th><th>Detail</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def render(status: dict[str, Any], now: float) -> str:
    """The whole page for ``status`` (the /status dict) as seen at ``now`` (epoch seconds)."""
    status = _dict(status)
    repos = [_dict(r) for r in _list(status.get("repos"))]
    body = "".join(
        (
            _summary(status, now),
            _not_ready(status),
            _canary_hold(repos),
            _problems(status),
            _repos(status, repos, now),
            _rollouts(_list(status.get("rollouts")), now),
            _events(_list(status.get("recent_events")), now),
        )
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(_title(status, repos))}</title><style>{STYLE}</style></head><body>{body}"
        f'<footer data-rendered="{esc(repr(now))}">Rendered {esc(utc(now))}; refreshes every {REFRESH_S} s · '
        '<a href="/status">status JSON</a> · '
        '<a href="/metrics">metrics</a></footer></body></html>\n'
    )
