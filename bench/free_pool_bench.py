"""Free-pool bench: success rate and tail latency through a pool like real free lists (issue 23).

Builds a world on loopback (``bench/free_pool_world.py``, one copy per gateway measured): 47 HTTP and
SOCKS5 upstreams with the behaviours free lists have (healthy, slow by seconds, turning slow, dying
during the run, stalling into black holes, black holes, resetting a share of connections, truncating a
share of answers, five behind one exit address, four in one /24), each leaving from its own 127.x
address; six sites (``site-a.test`` .. ``site-f.test``, resolved by the upstreams) that behave, ban
some exits with 403 or with a 200 captcha page, and rate-limit exits with 429.  A scraper sends the
same 1,000 GETs (at most 25 at once, paced at 30 a second) through each gateway, all gateways at once (each on its own copy of
the world, started together), and counts a success only for status 200 with the exact page.

Gateways: ``proxy-pool serve`` (its checker judges the list first, with its own ``/judge`` on the
admin port, so it learns the exit addresses as in life), with ``--without site-health|distinct-exit|
hedging`` as extra rows with that mechanism switched off through its config keys; pproxy ``-s rr``
and Apify's proxy-chain (``bench/proxy_chain_rotate.js``) rotating over the same list.

Run:  python bench/free_pool_bench.py [--rounds 2] [--without all] [--format json]
Needs: pproxy (Python), node + ``npm install --prefix bench/node`` (proxy-chain; skipped with a note
if absent).  Every process it starts is killed at the end, even on error.  All traffic stays on
127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import say
from bench.gateway_bench import Gateway
from bench.upstreams import Service, Services, free_port, wait_port

HERE = Path(__file__).resolve().parent
WORLD = HERE / "free_pool_world.py"
CHAIN_JS = HERE / "proxy_chain_rotate.js"
CHAIN_MODULE = HERE / "node" / "node_modules" / "proxy-chain"
RESULTS = HERE / "results" / "free-pool.md"

# the world -------------------------------------------------------------------------------------
# (kind, how many, parameters): 47 upstreams, about a third SOCKS5
LAYOUT: list[tuple[str, int]] = [
    ("healthy", 14), ("slow", 4), ("turns_slow", 3), ("dies", 4), ("stalls", 2), ("black_hole", 4),
    ("resets", 4), ("truncates", 3), ("shared_exit", 5), ("subnet", 4),
]  # fmt: skip
SLOW_S = 1.5  # the goal's p95
BASE_LATENCY = (0.05, 0.4)  # every upstream's own time to an answer's first byte, drawn once per upstream
SHARED_EXIT = (200, 1)
SUBNET = 201
ORIGIN = (250, 1)

BEHAVIOURS = {
    "healthy": "answers (after its own 0.05-0.4 s, like every upstream)",
    "slow": "every answer's first byte 1.5-4 s late (so also at the check)",
    "turns_slow": "fast at the check; from 3-10 s into the run every answer 2-5 s late",
    "dies": "dies 2-12 s into the run: live connections reset, new ones refused",
    "stalls": "3-12 s into the run becomes a black hole (accepts, never answers)",
    "black_hole": "accepts (SOCKS and CONNECT handshakes succeed), never answers a request (already at the check)",
    "resets": "resets 30 % of connections before any answer byte",
    "truncates": "cuts 30 % of answers half-way (connection reset)",
    "shared_exit": "healthy, 5 upstreams leaving from one exit address",
    "subnet": "healthy, 4 exits in one /24",
}


def build_spec(seed: int, base: int) -> dict[str, Any]:
    """The world every gateway meets (the same for all; only the 127.<base+N> prefix differs)."""
    rng = random.Random(seed)
    upstreams: list[dict[str, Any]] = []
    index = 0
    for kind, count in LAYOUT:
        for k in range(count):
            index += 1
            scheme = "socks5" if rng.random() < 0.33 else "http"
            listen = (SUBNET, k + 1) if kind == "subnet" else (index, 1)
            exit_ = SHARED_EXIT if kind == "shared_exit" else listen
            up: dict[str, Any] = {"name": f"u{index:02d}-{kind}-{scheme}", "scheme": scheme, "kind": kind,
                                  "listen": list(listen), "exit": list(exit_),
                                  "base": round(rng.uniform(*BASE_LATENCY), 3)}
            if kind == "slow":
                up["delay"] = round(rng.uniform(1.5, 4.0), 2)
            elif kind == "turns_slow":
                up["delay"], up["at"] = round(rng.uniform(2.0, 5.0), 2), round(rng.uniform(3.0, 10.0), 1)
            elif kind == "dies":
                up["at"] = round(rng.uniform(2.0, 12.0), 1)
            elif kind == "stalls":
                up["at"] = round(rng.uniform(3.0, 12.0), 1)
            elif kind in ("resets", "truncates"):
                up["share"] = 0.3
            upstreams.append(up)
    exits = sorted({f"{u['exit'][0]}.{u['exit'][1]}" for u in upstreams}, key=lambda k: tuple(map(int, k.split("."))))
    shuffled = exits[:]
    rng.shuffle(shuffled)
    quarter = len(exits) // 4
    subnet = [e for e in exits if e.startswith(f"{SUBNET}.")]
    shared = f"{SHARED_EXIT[0]}.{SHARED_EXIT[1]}"
    ban_b = sorted(set(shuffled[:quarter]) | {shared})
    captcha_c = sorted(set(shuffled[quarter : 2 * quarter]))
    ban_f = sorted(set(subnet) | set(shuffled[2 * quarter : 2 * quarter + len(exits) // 7]))
    sites = {
        "site-a.test": {"page": 8192, "what": "behaves"},
        "site-b.test": {"page": 16384, "ban403": ban_b, "what": f"403 to {len(ban_b)} exits (the shared one too)"},
        "site-c.test": {"page": 12288, "captcha": captcha_c, "what": f"200 captcha page to {len(captcha_c)} exits"},
        "site-d.test": {"page": 8192, "rate": [4, 10.0], "what": "429 after 4 requests per exit per 10 s"},
        "site-e.test": {"page": 65536, "what": "behaves, 64 KiB pages"},
        "site-f.test": {"page": 10240, "ban403": ban_f, "rate": [8, 10.0],
                        "what": f"403 to {len(ban_f)} exits (the whole /24 too), 429 after 8 per exit per 10 s"},
    }
    return {"seed": seed, "base": base, "upstreams": upstreams, "sites": sites, "exits": len(exits)}


class WorldProcess:
    """One copy of the world (a child process): its upstreams, sites and scraper."""

    def __init__(self, services: Services, spec_path: Path, index: int, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = work / "world.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(WORLD), "--spec", str(spec_path), "--world", str(index)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "ab"),  # noqa: SIM115
            start_new_session=True, env=env,
        )
        services.services.append(Service(f"world#{index}", "world", "127.0.0.1", 0, "http", self.proc, work))
        ready = self.read(30.0)["ready"]
        self.origin = ready["origin"]
        self.upstreams: list[dict[str, Any]] = ready["upstreams"]

    @property
    def urls(self) -> list[str]:
        return [u["url"] for u in self.upstreams]

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the world process said nothing in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise RuntimeError(f"the world process exited ({self.proc.wait(5)}):\n{tail}")
        return json.loads(line)

    def go(self, proxy: tuple[str, int], requests: int, concurrency: int, timeout: float, seed: int,
           label: str, rate: float) -> None:
        assert self.proc.stdin is not None
        msg = {"go": {"proxy": list(proxy), "requests": requests, "concurrency": concurrency, "timeout": timeout,
                      "seed": seed, "label": label, "rate": rate}}
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()


# the gateways ----------------------------------------------------------------------------------
MECHANISMS = {  # --without NAME: the keys that switch it off (contract: "Routing that learns from sites")
    "site-health": ("retry_on_status", "ban_rules"),
    "distinct-exit": ("distinct_exit",),
    "hedging": ("hedge_after",),
}


@dataclass
class Target:
    name: str
    kind: str  # proxy-pool | pproxy | proxy-chain
    without: str | None = None
    root: Path = ROOT
    skipped: str = ""  # why it is not measured
    config_notes: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # --variant: [gateway] lines of its own


def gateway_keys(root: Path) -> set[str]:
    """The [gateway] keys the settings model of the tree at ``root`` knows (unknown keys are refused)."""
    code = "import json; from config.settings import GatewaySettings as G; print(json.dumps(sorted(G.model_fields)))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_POOL_")}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True)
    return set(json.loads(out.stdout))


def pool_config(
    keys: set[str], without: str | None, admin_port: int, extra: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """The [gateway] tail and [checker] section of a proxy-pool config: how a scraper would set it up
    (403/429 and captcha pages are bans), with ``without``'s mechanism off; and notes on what this tree
    cannot be told."""
    lines: list[str] = []
    notes: list[str] = []
    rules = ""
    if without != "site-health":
        lines.append("retry_on_status = [403, 429]")
        if "ban_rules" in keys:
            rules = '[[gateway.ban_rules]]\nsite = "*"\nstatus = [200]\nbody_contains = "captcha"\n'
        else:
            notes.append("gateway.ban_rules is not on this tree: captcha pages (200) are not bans")
    if without == "distinct-exit":
        lines.append('distinct_exit = "off"')
    if without == "hedging":
        lines.append('hedge_after = "off"')
    for line in extra:
        key = line.split("=", 1)[0].strip()
        lines = [x for x in lines if x.split("=", 1)[0].strip() != key] + [line]
    judge = f"http://127.0.0.1:{admin_port}/judge"
    checker = f'[checker]\njudges = ["{judge}"]\nintegrity_pages = []\n'
    return "\n".join(lines) + ("\n" if lines else "") + rules + checker, notes


def plan_targets(args: argparse.Namespace) -> list[Target]:
    keys = gateway_keys(ROOT)
    targets = [Target("proxy-pool", "proxy-pool")]
    for without in args.without:
        target = Target(f"proxy-pool without {without}", "proxy-pool", without=without)
        missing = [k for k in MECHANISMS[without] if k not in keys]
        if without == "site-health" and "retry_on_status" in keys:
            missing = []  # retry_on_status alone already switches off what this tree has of it
        if missing:
            target.skipped = f"not measured: gateway.{', gateway.'.join(missing)} not on this tree (the mechanism is absent)"
        targets.append(target)
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        target = Target(f"proxy-pool, {name.strip()}", "proxy-pool")
        for item in filter(None, (a.strip() for a in assignments.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise SystemExit(f"--variant {spec!r}: write NAME:KEY=VALUE[,KEY=VALUE] (TOML values)")
            if key.strip() not in keys:
                target.skipped = f"not measured: gateway.{key.strip()} not on this tree"
            target.extra.append(f"{key.strip()} = {value.strip()}")
        targets.append(target)
    if args.old_root:
        old = Path(args.old_root).resolve()
        targets.append(Target(f"proxy-pool ({args.old_label or old.name})", "proxy-pool", root=old))
    if "pproxy" not in args.skip:
        targets.append(Target("pproxy -s rr", "pproxy"))
    if "proxy-chain" not in args.skip:
        target = Target("proxy-chain", "proxy-chain")
        if shutil.which("node") is None:
            target.skipped = "not measured: node is not installed"
        elif not CHAIN_MODULE.exists():
            target.skipped = "not measured: run `npm install --prefix bench/node` first"
        targets.append(target)
    for target in targets:
        if target.kind == "proxy-pool":
            _, target.config_notes = pool_config(gateway_keys(target.root), target.without, 0, target.extra)
    return targets


class Front:
    """A started gateway over one world's upstream list."""

    def __init__(self, services: Services, target: Target, world: WorldProcess, work: Path) -> None:
        self.target = target
        self.gateway: Gateway | None = None
        self.count = len(world.urls)
        if target.kind == "proxy-pool":
            admin_port = free_port()
            extra, _ = pool_config(gateway_keys(target.root), target.without, admin_port, target.extra)
            self.gateway = Gateway(services, work, proxies=world.urls, db=work / "pool.db", extra_config=extra,
                                   root=target.root, admin_port=admin_port)
            self.address = self.gateway.address
        elif target.kind == "pproxy":
            self.address = ("127.0.0.1", services.pproxy("127.0.0.1", remotes=world.urls).port)
        else:
            work.mkdir(parents=True, exist_ok=True)
            listing = work / "upstreams.txt"
            listing.write_text("\n".join(world.urls) + "\n")
            port = free_port()
            proc = services.spawn(["node", str(CHAIN_JS), str(port), str(listing)], work)
            services.services.append(Service("proxy-chain", "proxy-chain", "127.0.0.1", port, "http", proc, work))
            wait_port("127.0.0.1", port, 20.0, proc)
            self.address = ("127.0.0.1", port)

    def wait_checked(self, timeout: float) -> dict[str, Any]:
        """proxy-pool only: until its checker has judged every upstream; what it made of them."""
        gw = self.gateway
        if gw is None:
            return {}
        start = time.monotonic()
        while True:
            if gw.proc.poll() is not None:
                log = (gw.work / "stdout.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"proxy-pool serve exited with {gw.proc.returncode}:\n{log}")
            try:
                total = gw.admin("/api/proxies?limit=1")["total"]
                new = gw.admin("/api/proxies?status=new&limit=1")["total"]
                if total >= self.count and new == 0:
                    break
            except OSError:
                pass
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{self.target.name}: the checker had not judged every upstream after {timeout} s")
            time.sleep(0.25)
        proxies = gw.admin("/api/proxies?limit=1000")["proxies"]
        return {"checked_in_s": round(time.monotonic() - start, 1), "proxies": proxies}

    def sites(self) -> list[dict[str, Any]]:
        """proxy-pool only, where the tree has it: ``GET /api/sites`` (per site requests, bans, upstreams
        resting now), read right after the scrape."""
        if self.gateway is None:
            return []
        try:
            return list(self.gateway.admin("/api/sites")["sites"])
        except (OSError, KeyError, ValueError):
            return []

    def metrics(self) -> dict[str, float]:
        """proxy-pool only: its counters whose names speak of retries, hedges or bans (summed over labels)."""
        gw = self.gateway
        if gw is None:
            return {}
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not any(w in line for w in ("retr", "hedg", "ban", "rest", "attempt", "site", "exit")):
                continue
            name = line.split("{")[0].split(" ")[0]
            try:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                pass
        return out


# one round -----------------------------------------------------------------------------------------
def run_round(targets: list[Target], spec: dict[str, Any], work: Path, args: argparse.Namespace,
              round_no: int) -> dict[str, Any]:
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    live = [t for t in targets if not t.skipped]
    out: dict[str, Any] = {}
    with Services(work / f"round{round_no}", log=say) as services:
        worlds = [WorldProcess(services, spec_path, i, work / f"round{round_no}" / f"world{i}")
                  for i in range(len(live))]
        fronts = []
        for i, (target, world) in enumerate(zip(live, worlds, strict=True)):
            fronts.append(Front(services, target, world, work / f"round{round_no}" / f"gw{i}"))
        checks = {f.target.name: f.wait_checked(args.check_timeout) for f in fronts}
        for front, world in zip(fronts, worlds, strict=True):
            check = checks.get(front.target.name)
            if check:
                by_addr = {u["url"].split("://")[1]: u for u in world.upstreams}
                active = [p for p in check["proxies"] if p["status"] == "active"]
                dead_kinds = Counter(by_addr.get(f"{p['host']}:{p['port']}", {}).get("kind", "?")
                                     for p in check["proxies"] if p["status"] != "active")
                say(f"{front.target.name}: checked in {check['checked_in_s']} s: {len(active)} active, "
                    f"{len({p.get('exit_ip') for p in active if p.get('exit_ip')})} exit addresses known; "
                    f"judged dead: {dict(dead_kinds)}")
                out.setdefault(front.target.name, {})["check"] = {
                    "seconds": check["checked_in_s"], "active": len(active),
                    "exits_known": len({p.get("exit_ip") for p in active if p.get("exit_ip")}),
                    "dead_kinds": dict(dead_kinds)}
        seed = args.seed * 100 + round_no
        for front, world in zip(fronts, worlds, strict=True):
            world.go(front.address, args.requests, args.concurrency, args.timeout, seed, f"r{round_no}", args.rate)
        say(f"round {round_no}: {args.requests} GETs at concurrency {args.concurrency}, {args.rate:g}/s, through "
            f"{len(fronts)} gateways at once")
        for front, world in zip(fronts, worlds, strict=True):
            result = world.read(args.requests * args.timeout / args.concurrency + 120)["result"]
            summary = summarise(result)
            summary["metrics"] = front.metrics()
            summary["sites"] = front.sites()
            out.setdefault(front.target.name, {}).update(summary)
            say(f"round {round_no} {front.target.name:<34} {summary['success_pct']:6.2f} % ok  "
                f"p50 {summary['p50_s']:.2f} s  p95 {summary['p95_s']:.2f} s  p95 all {summary['p95_all_s']:.2f} s  "
                f"{summary['wall_s']:.0f} s  fails {summary['outcomes_failed']}")
            d = summary["exit_spread"].get("site-d.test")
            if d:
                say(f"  site-d.test (rate-limited per exit) was reached from {d['exits']} exits, at most {d['max']} "
                    f"requests from one, {d['top5_pct']} % from the busiest five: " + ", ".join(
                        f"{e['requests']} {e['kind']} ({e['latency_s']:.2f} s)"
                        for e in summary["busiest_exits"].get("site-d.test", [])))
            if summary["sites"]:
                say("  /api/sites after the run: " + ", ".join(
                    f"{row['site']} bans {row['bans']} resting {row['resting']}" for row in summary["sites"]))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    ok = [r for r in rows if r["outcome"] == "ok"]
    failed = [r for r in rows if r["outcome"] != "ok"]
    blame: Counter[str] = Counter()
    for r in failed:
        last = r["kinds"][-1] if r["kinds"] else r.get("exit_kind") or "(no upstream saw the request: refused, or reset in the handshake)"
        blame[f"{r['outcome']} <- {last}"] += 1
    attempts = Counter(len(r["upstreams"]) for r in rows)
    slow_ok = [r for r in ok if r["seconds"] > SLOW_S]
    spread = {}
    for site, counts in sorted(result.get("exit_hits", {}).items()):
        total = sum(counts) or 1
        spread[site] = {"exits": len(counts), "max": counts[0] if counts else 0,
                        "top5_pct": round(100.0 * sum(counts[:5]) / total, 1)}
    return {
        "requests": len(rows),
        "exit_spread": spread,
        "busiest_exits": result.get("busiest_exits", {}),
        "ok": len(ok),
        "success_pct": 100.0 * len(ok) / max(1, len(rows)),
        "p50_s": pct([r["seconds"] for r in ok], 0.50),
        "p95_s": pct([r["seconds"] for r in ok], 0.95),
        "p95_all_s": pct([r["seconds"] for r in rows], 0.95),
        "wall_s": result["wall_seconds"],
        "outcomes_failed": dict(Counter(r["outcome"] for r in failed).most_common()),
        "failed_by_site": dict(Counter(r["site"] for r in failed).most_common()),
        "blame": dict(blame.most_common()),
        "upstreams_per_request": {str(k): v for k, v in sorted(attempts.items())},
        "tries_per_request": sum(len(r["upstreams"]) for r in rows) / max(1, len(rows)),
        "slow_ok": len(slow_ok),
        "slow_ok_by_kind": dict(Counter(r["kinds"][-1] if r["kinds"] else "?" for r in slow_ok).most_common()),
        "failed_rows": [{k: r[k] for k in ("rid", "site", "outcome", "seconds", "kinds", "exit")} for r in failed],
    }


# the report ----------------------------------------------------------------------------------------
def combine(targets: list[Target], rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for target in targets:
        if target.skipped:
            rows.append({"target": target.name, "skipped": target.skipped})
            continue
        per = [r[target.name] for r in rounds if target.name in r]
        blame: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        for p in per:
            blame.update(p["blame"])
            outcomes.update(p["outcomes_failed"])
        rows.append({
            "target": target.name,
            "success_pct": statistics.median(p["success_pct"] for p in per),
            "p50_s": statistics.median(p["p50_s"] for p in per),
            "p95_s": statistics.median(p["p95_s"] for p in per),
            "p95_all_s": statistics.median(p["p95_all_s"] for p in per),
            "wall_s": statistics.median(p["wall_s"] for p in per),
            "tries_per_request": statistics.median(p["tries_per_request"] for p in per),
            "slow_ok": statistics.median(p["slow_ok"] for p in per),
            "rounds_success_pct": [round(p["success_pct"], 1) for p in per],
            "failures_all_rounds": dict(outcomes.most_common()),
            "blame_all_rounds": dict(blame.most_common()),
            "check": [p.get("check") for p in per],
            "metrics": [p.get("metrics") for p in per],
            "config_notes": target.config_notes,
            "upstreams_per_request": [p["upstreams_per_request"] for p in per],
            "slow_ok_by_kind": [p["slow_ok_by_kind"] for p in per],
        })
    return rows


def commit_of(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %cI"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def render(data: dict[str, Any]) -> str:
    env = data["environment"]
    pace = f"paced at {data['rate']:g}/s" if data["rate"] else "unpaced"
    out = [
        f"Free-pool bench, {env['date']}, commit {env['commit']}, {env['machine']}, load {env['load']}",
        (f"{data['requests']} GETs per gateway at concurrency {data['concurrency']}, {pace}, "
         "client timeout "
         f"{data['timeout']} s, {len(data['rounds'])} round(s), medians (each round's success in brackets)"),
        "",
        f"| gateway | success | p50 | p95 | p95 all | ok > {SLOW_S:g} s | tries/req | wall | failures (all rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in data["table"]:
        if "skipped" in row:
            out.append(f"| {row['target']} | {row['skipped']} | | | | | | | |")
            continue
        rounds = ", ".join(f"{v}" for v in row["rounds_success_pct"])
        fails = ", ".join(f"{k} {v}" for k, v in row["failures_all_rounds"].items()) or "-"
        out.append(f"| {row['target']} | {row['success_pct']:.1f} % ({rounds}) | {row['p50_s']:.2f} s | "
                   f"{row['p95_s']:.2f} s | {row['p95_all_s']:.2f} s | {row['slow_ok']:.0f} | "
                   f"{row['tries_per_request']:.2f} | {row['wall_s']:.0f} s | {fails} |")
    out.append("")
    out.append("p50/p95: of the successful requests; p95 all: of every request, until its outcome (a timeout "
               f"counts {data['timeout']} s); ok > {SLOW_S:g} s: successes slower than that (median count); "
               "tries/req: upstreams that saw a request, on average (retries and hedges; 0 when none did).")
    for row in data["table"]:
        if "skipped" in row:
            continue
        if row["config_notes"]:
            out.append(f"{row['target']}: " + "; ".join(row["config_notes"]))
    out.append("")
    out.append(f"Successes over {SLOW_S:g} s by behaviour of the upstream that answered (all rounds):")
    for row in data["table"]:
        if "skipped" in row:
            continue
        slow: Counter[str] = Counter()
        for per in row["slow_ok_by_kind"]:
            slow.update(per)
        out.append(f"- {row['target']}: " + (", ".join(f"{k} {v}" for k, v in slow.most_common()) or "-"))
    out.append("")
    out.append("Failures by outcome <- behaviour of the last upstream the request reached (all rounds):")
    for row in data["table"]:
        if "skipped" in row or not row["blame_all_rounds"]:
            continue
        out.append(f"- {row['target']}: " + ", ".join(f"{k} {v}" for k, v in row["blame_all_rounds"].items()))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="proxy-pool, pproxy and proxy-chain over a free-list-like pool")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--timeout", type=float, default=10.0, help="the scraper's limit per request, seconds")
    parser.add_argument("--rate", type=float, default=30.0,
                        help="requests started per second at most (0: as fast as the gateway answers)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--base", type=int, default=60, help="worlds live on 127.<base+N>.0.0/16")
    parser.add_argument("--without", action="append", default=[],
                        help="also run proxy-pool with this mechanism off: site-health, distinct-exit, hedging, all")
    parser.add_argument("--skip", action="append", default=[], help="pproxy or proxy-chain")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                        help='also run proxy-pool with these [gateway] keys (TOML values), e.g. "short bans:site_ban_seconds=10"')
    parser.add_argument("--old-root", help="also run the proxy-pool in this source tree (git archive REV | tar -x)")
    parser.add_argument("--old-label", help="its name in the table (default: the directory name)")
    parser.add_argument("--check-timeout", type=float, default=90.0)
    parser.add_argument("--format", choices=["table", "json"], default="table")
    args = parser.parse_args(argv)
    withouts: list[str] = []
    for value in args.without:
        for name in value.split(","):
            name = name.strip()
            if name == "all":
                withouts += list(MECHANISMS)
            elif name in MECHANISMS:
                withouts.append(name)
            else:
                print(f"--without: unknown mechanism {name!r} (site-health, distinct-exit, hedging, all)",
                      file=sys.stderr)
                return 2
    args.without = list(dict.fromkeys(withouts))

    targets = plan_targets(args)
    for t in targets:
        if t.skipped:
            say(f"{t.name}: {t.skipped}")
        for note in t.config_notes:
            say(f"{t.name}: {note}")
    spec = build_spec(args.seed, args.base)
    work = Path(tempfile.mkdtemp(prefix="free-pool-bench-"))

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    rounds = []
    try:
        for n in range(1, args.rounds + 1):
            rounds.append(run_round(targets, spec, work, args, n))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    data = {
        "environment": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit_of(ROOT),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        },
        "requests": args.requests, "concurrency": args.concurrency, "timeout": args.timeout, "rate": args.rate,
        "world": {"upstreams": Counter(u["kind"] for u in spec["upstreams"]),
                  "socks5": sum(u["scheme"] == "socks5" for u in spec["upstreams"]),
                  "exits": spec["exits"], "sites": {k: v["what"] for k, v in spec["sites"].items()},
                  "behaviours": BEHAVIOURS},
        "table": combine(targets, rounds),
        "rounds": rounds,
    }
    text = render(data)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    (RESULTS.with_suffix(".json")).write_text(json.dumps(data, indent=1, default=str))
    print(json.dumps(data, indent=1, default=str) if args.format == "json" else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
