"""The results table (Markdown, so it pastes into docs/performance.md): every target of
issue 11 with presenced's number, the TypeScript peer's beside it, their ratio
(presenced ÷ peer) and met/missed; then what is measured without a target.
"""

from __future__ import annotations

from bench.suite.host import one_line

# Issue 11's targets (server CPU from /proc, one process unless said).
HEARTBEAT_RATIO = 1.0  # CPU per heartbeat at or below the peer's, at both rates
MARGINAL_US = 60.0  # marginal cost of a heartbeat, Redis store, write included
UPDATE_US = 50.0  # and at or below the peer's
IDLE_PERCENT = 2.0  # of a core for 20,000 idle connections
KIB_PER_USER = 12.0
LOGINS_PER_CORE = 3000.0
STORM_BACK_S = 10.0
SCALE_USERS = 50_000
SCALE_P99_MS = 100.0
FILE_LIMIT = 20_000
WORKERS_CAPACITY = 1.8
CROSS_P99_MS = 30.0
V2_RATIO = 1.10

Row = tuple[str, str, str, str, str, str, str]


def _f(v: float | None, digits: int = 0, unit: str = "") -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def _at_most(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value <= limit else f"missed ({value / limit:.2f}× the target)"


def _at_least(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return "met" if value >= limit else f"missed ({limit / value:.2f}× short)"


def _x(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def _ratio(ours: float | None, peer: float | None) -> float | None:
    if ours is None or not peer:
        return None
    return ours / peer


def _ok(d: object) -> dict | None:
    return d if isinstance(d, dict) and "error" not in d and "skipped" not in d else None


def _both(status: str, other: str) -> str:
    return status if status == other else f"{status}; {other}"


def target_rows(r: dict) -> list[Row]:
    """(target, load, presenced, peer, ratio, goal, status) for every target measured."""
    out: list[Row] = []
    hb = r.get("heartbeat") or {}
    peer_hb = _ok(hb.get("tspeer")) or {}
    for key, store in (("presenced-embedded", "embedded"), ("presenced-redis", "Redis")):
        ours = _ok(hb.get(key))
        if ours is None:
            continue
        load = ours["fast_run"]["load"].split(", heartbeat")[0]
        for field, rate_field in (("cpu_per_heartbeat_us", "heartbeats_per_s"),
                                  ("cpu_per_heartbeat_slow_us", "heartbeats_per_s_slow")):
            a, b = ours.get(field), peer_hb.get(field)
            ratio = _ratio(a, b)
            extra = ""
            if store == "Redis":
                redis_field = field.replace("cpu_", "redis_cpu_", 1)
                extra = f" (+ Redis {_f(ours.get(redis_field), 1)})"
            out.append((f"CPU per heartbeat at {ours[rate_field]:,.0f}/s, {store} store",
                        f"{load}; peer in memory",
                        f"{_f(a, 1)} µs{extra}", f"{_f(b, 1)} µs", _x(ratio),
                        "≤ peer", _at_most(ratio, HEARTBEAT_RATIO)))
    ours = _ok(hb.get("presenced-redis"))
    if ours is not None:
        a = ours.get("cpu_per_heartbeat_marginal_us")
        b = peer_hb.get("cpu_per_heartbeat_marginal_us")
        out.append(("Marginal CPU per heartbeat, Redis store (write included)",
                    "extra CPU per extra heartbeat between the two rates",
                    f"{_f(a, 1)} µs", f"{_f(b, 1)} µs", _x(_ratio(a, b)),
                    f"≤ {MARGINAL_US:.0f} µs", _at_most(a, MARGINAL_US)))

    up = r.get("update") or {}
    peer_up = _ok(up.get("tspeer")) or {}
    for key, store in (("presenced-embedded", "embedded"), ("presenced-redis", "Redis")):
        ours = _ok(up.get(key))
        if ours is None:
            continue
        a, b = ours.get("cpu_per_update_us"), peer_up.get("cpu_per_update_us")
        ratio = _ratio(a, b)
        run = ours["update_run"]
        out.append((f"CPU per delivered update, {store} store",
                    f"{run['load']}; {ours['delivered_per_s']:,.0f} updates/s, "
                    f"{_f(run.get('updates_per_item'), 2)} per stream item",
                    f"{_f(a, 1)} µs", f"{_f(b, 1)} µs", _x(ratio),
                    f"≤ peer, ≤ {UPDATE_US:.0f} µs",
                    _both(_at_most(ratio, 1.0), _at_most(a, UPDATE_US))))

    idle = r.get("idle") or {}
    peer_idle = _ok(idle.get("tspeer")) or {}
    for key, store in (("presenced-embedded", "embedded"), ("presenced-redis", "Redis")):
        ours = _ok(idle.get(key))
        if ours is None:
            continue
        a, b = ours.get("cpu_percent_per_20k"), peer_idle.get("cpu_percent_per_20k")
        out.append((f"20,000 idle connections, {store} store (% of a core)",
                    f"{ours['connections']:,.0f} logged-in connections measured, keepalive "
                    "only (ping after 30 s of silence); the server's CPU with nobody "
                    "connected plus the cost per connection × 20,000",
                    f"{_f(a, 2)} % ({_f(ours.get('cpu_percent_nobody_connected'), 2)} % "
                    "with nobody)",
                    f"{_f(b, 2)} % ({_f(peer_idle.get('cpu_percent_nobody_connected'), 2)} % "
                    "with nobody)", _x(_ratio(a, b)),
                    f"≤ {IDLE_PERCENT:g} %", _at_most(a, IDLE_PERCENT)))

    mem = r.get("memory") or {}
    ours, peer = _ok(mem.get("presenced-redis")), _ok(mem.get("tspeer")) or {}
    if ours is not None:
        a, b = ours.get("rss_per_user_kib"), peer.get("rss_per_user_kib")
        out.append(("Resident memory per connected user (realistic run)",
                    f"{ours['load']}; presenced Redis store, peer in memory",
                    f"{_f(a, 1)} KiB ({_f(ours['connected'])} users)",
                    f"{_f(b, 1)} KiB ({_f(peer.get('connected'))} users)",
                    _x(_ratio(a, b)), f"≤ {KIB_PER_USER:g} KiB",
                    _at_most(a, KIB_PER_USER)))

    lg = r.get("logins") or {}
    peer_lg = _ok(lg.get("tspeer")) or {}
    for key, store in (("presenced-embedded", "embedded"), ("presenced-redis", "Redis")):
        ours = _ok(lg.get(key))
        if ours is None:
            continue
        a, b = ours.get("logins_per_s_per_core"), peer_lg.get("logins_per_s_per_core")
        out.append((f"Logins per second per core, {store} store",
                    "48 in flight: TCP, upgrade, AuthChain, SERVER_READY, port, module, close",
                    f"{_f(a)}/s ({_f(ours.get('cpu_per_login_ms'), 2)} ms)",
                    f"{_f(b)}/s ({_f(peer_lg.get('cpu_per_login_ms'), 2)} ms)",
                    _x(_ratio(a, b)), f"≥ {LOGINS_PER_CORE:,.0f}/s",
                    _at_least(a, LOGINS_PER_CORE)))

    st = r.get("storm") or {}
    peer_st = (_ok(st.get("tspeer")) or {}).get("storm") or {}
    for key, store in (("presenced-embedded", "embedded"), ("presenced-redis", "Redis")):
        ours = _ok(st.get(key))
        if ours is None or not ours.get("storm"):
            continue
        s = ours["storm"]
        a, b = s.get("all_back_s"), peer_st.get("all_back_s")
        status = _at_most(a, STORM_BACK_S) if a is not None else (
            f"missed ({s['not_back']:,} never back)")
        bad = s.get("offline_seen_back_within_grace")
        status = _both(status, "no OFFLINE" if bad == 0 else f"missed ({bad:,} OFFLINE)")
        if ours.get("errors"):
            status += f"; {ours['errors']:,} errors"
        out.append((f"Reconnect storm, {store} store",
                    f"{s['dropped']:,} users dropped at once, back within 1 s; "
                    f"{s['offline_grace_s']:g} s grace",
                    _storm_text(s), _storm_text(peer_st) if peer_st else "–",
                    _x(_ratio(a, b)),
                    f"all back ≤ {STORM_BACK_S:g} s, no OFFLINE", status))

    sc = _ok(r.get("scale"))
    if sc is not None:
        lat = sc.get("notify_latency_ms") or {}
        files = sc.get("open_files") or []
        statuses = [_at_most(lat.get("p99"), SCALE_P99_MS)]
        if sc.get("errors"):
            statuses.append(f"{sc['errors']:,} errors")
        if sc.get("undelivered"):
            statuses.append(f"{sc['undelivered']:,} undelivered")
        if files and max(files) >= FILE_LIMIT:
            statuses.append("a process at the file limit")
        away = sc.get("between_sessions", 0)
        # Churning users are away between sessions: twice the expected number
        # away is still a full population, more is users the server lost.
        if (sc.get("connected") or 0) < SCALE_USERS - 2 * away:
            statuses.append(f"only {sc['connected']:,.0f} users")
        out.append((f"{SCALE_USERS:,} users, --workers {sc['workers']}",
                    f"{sc['run']['load']}; Redis store; generator on the same machine",
                    f"{_f(sc.get('connected'))} users connected (~{away:,} between churn "
                    f"sessions): p50 {_f(lat.get('p50'), 1)} / p99 "
                    f"{_f(lat.get('p99'), 1)} ms, errors {sc.get('errors')}, undelivered "
                    f"{sc.get('undelivered')}, open files per process "
                    f"{', '.join(f'{n:,}' for n in files)}; server {sc['server_cpu_percent']:.0f}"
                    f" %, Redis {sc['redis_cpu_percent']:.0f} %, generator "
                    f"{sc['generator_cpu_percent']:.0f} % of a core", "–", "–",
                    f"p99 ≤ {SCALE_P99_MS:.0f} ms, no errors, no undelivered, < {FILE_LIMIT:,} "
                    "files per process", "met" if statuses == ["met"] else "; ".join(statuses)))

    wk = _ok(r.get("workers"))
    if wk is not None:
        costs = wk.get("update") or {}
        w1 = (costs.get("presenced-redis") or {}).get("cpu_per_update_us")
        w2 = (costs.get("presenced-redis-w2") or {}).get("cpu_per_update_us")
        cap = wk.get("capacity_ratio")
        out.append(("--workers 2 capacity, from CPU per delivered update",
                    "Redis store, the update load; 2 × (µs with 1 worker) / (µs with 2)",
                    f"2 × {_f(w1, 1)} / {_f(w2, 1)} µs = {_f(cap, 2)}×", "–", "–",
                    f"≥ {WORKERS_CAPACITY}×", _at_least(cap, WORKERS_CAPACITY)))
        cross = _ok(wk.get("cross_process")) or {}
        lat = cross.get("cross_latency_ms") or {}
        allx = cross.get("notify_latency_ms") or {}
        out.append(("Cross-process notify latency p99",
                    "two instances on one Redis, users alternately on each, the update load; "
                    "moves whose sender and receiver are on different instances",
                    f"p50 {_f(lat.get('p50'), 1)} / p99 {_f(lat.get('p99'), 1)} ms "
                    f"(n={_f(lat.get('count'))}; all deliveries p99 {_f(allx.get('p99'), 1)} ms)",
                    "–", "–", f"p99 ≤ {CROSS_P99_MS:.0f} ms",
                    _at_most(lat.get("p99"), CROSS_P99_MS)))

    v2 = r.get("v2")
    if isinstance(v2, dict) and "skipped" in v2:
        out.append(("CPU per update, v2 subscriber vs ADR-246 (issue 10)", "–",
                    "skipped: " + v2["skipped"], "–", "–", f"≤ {V2_RATIO:.2f}× ADR-246",
                    "not measured"))
    elif _ok(v2) is not None:
        a = v2["v2"]["cpu_per_update_us"]
        b = v2["adr246"]["cpu_per_update_us"]
        out.append(("CPU per update, v2 subscriber vs ADR-246 (issue 10)",
                    f"{v2['v2']['run']['load']}, churn only (v2 carries no positions)",
                    f"v2 {_f(a, 1)} µs, ADR-246 {_f(b, 1)} µs", "–",
                    f"{_f(v2.get('ratio'), 2)}× ADR-246", f"≤ {V2_RATIO:.2f}× ADR-246",
                    _at_most(v2.get("ratio"), V2_RATIO)))
    return out


def _storm_text(s: dict) -> str:
    back = (f"all back after {s['all_back_s']:.2f} s" if s.get("all_back_s") is not None
            else f"{s.get('not_back', 0):,} never back")
    return (f"{back} (p50 {_f(s.get('back_p50_s'), 2)} s); OFFLINE seen "
            f"{s.get('offline_seen', 0):,}, of them for users back within the grace "
            f"{s.get('offline_seen_back_within_grace', 0):,}")


def info_rows(r: dict) -> list[tuple[str, str, str]]:
    """(what, load, result) for what is measured without a target."""
    out: list[tuple[str, str, str]] = []
    mem = r.get("memory") or {}
    for key, name in (("presenced-redis", "presenced"), ("tspeer", "TypeScript peer")):
        real = _ok(mem.get(key))
        if real is None:
            continue
        lat = real.get("notify_latency_ms") or {}
        sim = real.get("simulate", {})
        w = real["window"]
        out.append((f"Notify latency, realistic run ({name})",
                    f"{real['load']}; {w['heartbeats_per_s']:,.0f} heartbeats/s, "
                    f"{w['delivered_per_s']:,.0f} updates/s, server "
                    f"{w['server_cpu_percent']:.0f} % of a core",
                    f"p50 {_f(lat.get('p50'), 1)} / p99 {_f(lat.get('p99'), 1)} ms "
                    f"(n={_f(lat.get('count'))}); errors {sim.get('errors')}, undelivered "
                    f"{sim.get('undelivered')}; RSS {_f(real['rss_idle_mib'])} → "
                    f"{_f(real['rss_loaded_mib'])} MiB"))
    hb = r.get("heartbeat") or {}
    ours = _ok(hb.get("presenced-embedded"))
    if ours is not None:
        out.append(("Marginal CPU per heartbeat, embedded store", "between the two rates",
                    f"{_f(ours.get('cpu_per_heartbeat_marginal_us'), 1)} µs"))
    cold = _ok(r.get("coldstart"))
    if cold is not None:
        p = cold["populate"]
        out.append(("Cold start (`serve --redis-url` to /readyz 200)",
                    f"{p['users_online']:,} online users, {p['friendships']:,} friendships "
                    f"in Redis ({cold['redis_used_mib']:.0f} MiB)", f"{cold['ready_s']:.2f} s"))
    sweep = _ok(r.get("sweep"))
    if sweep is not None:
        e, c = sweep["engine_tick"], sweep["claim"]
        out.append(("Expiry sweep: engine tick",
                    f"{e['users']:,} online users with sessions, half subscribed",
                    f"{e['nothing_expires']['median_ms']:.3f} ms with nothing to expire; "
                    f"{e['ten_percent_expire']['median_ms']:.0f} ms when 10 % expire, in "
                    f"steps of {e.get('step_users', '?')} users blocking the event loop for "
                    f"at most {e.get('longest_step', {}).get('max_ms', float('nan')):.1f} ms"))
        out.append(("Expiry sweep: Redis claim script", f"{c['users']:,} online users in Redis",
                    f"{c['nothing_expires']['median_ms']:.2f} ms with nothing to expire; "
                    f"{c['ten_percent_expire']['median_ms']:.0f} ms when 10 % expire "
                    f"({c['redis_cpu_ms_ten_percent']:.0f} ms of it inside Redis)"))
    sat = r.get("saturation") or {}
    one, two = _ok(sat.get("w1")), _ok(sat.get("w2"))
    if one and two:
        a, b = one.get("max_delivered_per_s"), two.get("max_delivered_per_s")
        last = [f"{s['workers']} worker(s)" for s in (one, two) if s.get("steps")
                and s["steps"][-1]["delivered_per_s"] == s.get("max_delivered_per_s")]
        note = (f"; not saturated at the highest step for {' and '.join(last)} (the generator "
                "and Redis share the 2 cores)" if last else "")
        out.append(("Workers: max deliveries/s with p99 ≤ 100 ms, 1 vs 2",
                    "Redis store, everyone subscribed, rising --speed",
                    f"{_f(a)} vs {_f(b)} deliveries/s{note}"))
    return out


def table(r: dict) -> str:
    lines = [f"Machine: {one_line(r['machine'])}",
             f"Mode: {r['mode']}, {r.get('elapsed_s', 0) / 60:.1f} min; ratio = presenced ÷ "
             "TypeScript peer, same load in the same run", "",
             "| target | load | presenced | TS peer | ratio | goal | status |",
             "|---|---|---|---|---|---|---|"]
    for row in target_rows(r):
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    info = info_rows(r)
    if info:
        lines += ["", "| also measured | load | result |", "|---|---|---|"]
        for row in info:
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    errors = _errors(r)
    for part, err in errors:
        lines.append(f"\n{part} failed: {err}")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "/")


def _errors(r: dict, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Every failed part, configuration or run, as (where, error)."""
    out: list[tuple[str, str]] = []
    for key, value in r.items():
        if not isinstance(value, dict) or key in ("machine", "settings"):
            continue
        where = f"{prefix}{key}"
        if isinstance(value.get("error"), str):
            out.append((where, value["error"]))
        elif depth < 2:
            out.extend(_errors(value, where + "/", depth + 1))
    return out
