"""Operator files: Prometheus config and alert rules pass promtool, the alerts fire on the right series,
the Grafana dashboard and compose file refer only to things that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from gateway.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian package prometheus) not installed"
)
METRIC_NAME = re.compile(r"\bproxy_pool_[a-zA-Z0-9_]+")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=60)


def exposed_sample_names() -> set[str]:
    """Every sample name a fully exercised Metrics exposes (histograms with _bucket/_sum/_count)."""
    m = Metrics(lambda: {("active", "http"): 1}, lambda: {"DE": 1})
    m.request_done("GET", "ok", 0.1)
    m.bytes("upstream_to_client", 1)
    m.upstream_failure("timeout")
    m.check_done("tcp_connect", "passed", 0.1)
    m.scrape_done(1, True, 1)
    m.notifier_up("smtp", True)
    m.event("proxy.pool_low")
    m.credits_spent(1)
    body, _ = m.exposition()
    return {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def dashboard_exprs() -> list[str]:
    dash = json.loads((CONFIG / "grafana-dashboard.json").read_text())
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


@needs_promtool
def test_alert_rules_pass_promtool_check():
    """`promtool check rules config/alerts.yml` accepts the rules file."""
    done = promtool("check", "rules", "config/alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_prometheus_config_passes_promtool_check_from_anywhere(tmp_path):
    """`promtool check config` accepts prometheus.yml and resolves alerts.yml next to it, whatever the cwd."""
    for cwd in (ROOT, tmp_path):
        done = promtool("check", "config", str(CONFIG / "prometheus.yml"), cwd=cwd)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 rule files found" in done.stdout + done.stderr


def test_prometheus_scrapes_the_admin_metrics():
    """The compose Prometheus scrapes proxy-pool:8898/metrics and loads alerts.yml."""
    cfg = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "proxy-pool")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["proxy-pool:8898"]
    assert cfg["rule_files"] == ["alerts.yml"]


ALERT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'proxy_pool_proxies{{status="active",protocol="http"}}'
        values: '3x30'
      - series: 'proxy_pool_proxies{{status="dead",protocol="http"}}'
        values: '40x30'
      - series: 'proxy_pool_notifier_up{{notifier="smtp"}}'
        values: '0x30'
      - series: 'proxy_pool_notifier_up{{notifier="webhook"}}'
        values: '1x30'
      - series: 'proxy_pool_gateway_requests_total{{method="GET",outcome="ok"}}'
        values: '0+60x30'
      - series: 'proxy_pool_gateway_requests_total{{method="GET",outcome="upstream_error"}}'
        values: '0+60x30'
      - series: 'up{{job="proxy-pool",instance="proxy-pool:8898"}}'
        values: '1x30'
    alert_rule_test:
      - eval_time: 20m
        alertname: ProxyPoolLow
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "proxy-pool has only 3 active proxies (threshold 5)"
      - eval_time: 20m
        alertname: ProxyPoolEmpty
        exp_alerts: []
      - eval_time: 20m
        alertname: ProxyPoolNotifierDown
        exp_alerts:
          - exp_labels: {{severity: warning, notifier: smtp}}
            exp_annotations:
              summary: "notifier smtp fails its health check: alerts by it are not delivered"
      - eval_time: 20m
        alertname: ProxyPoolGatewayErrorRatioHigh
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "50% of gateway requests fail on the pool side"
      - eval_time: 20m
        alertname: ProxyPoolDown
        exp_alerts: []
  - interval: 10m
    input_series:
      # source 1 fails every scrape; source 2 fails too but also succeeds; source 3 failed once.
      - series: 'proxy_pool_scrapes_total{{source="1",result="failed"}}'
        values: '0+1x12'
      - series: 'proxy_pool_scrapes_total{{source="1",result="ok"}}'
        values: '0x12'
      - series: 'proxy_pool_scrapes_total{{source="2",result="failed"}}'
        values: '0+1x12'
      - series: 'proxy_pool_scrapes_total{{source="2",result="ok"}}'
        values: '0+1x12'
      - series: 'proxy_pool_scrapes_total{{source="3",result="failed"}}'
        values: '0 1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'proxy_pool_scrapes_total{{source="3",result="ok"}}'
        values: '0x12'
    alert_rule_test:
      - eval_time: 100m
        alertname: ProxyPoolSourceFailing
        exp_alerts:
          - exp_labels: {{severity: warning, source: "1"}}
            exp_annotations:
              summary: "source 1 failed 10 scrapes in 2 h and none succeeded"
              description: "See `proxy-pool sources list` and the log line 'source scrape failed'."
  - interval: 1m
    input_series:
      - series: 'proxy_pool_proxies{{status="active",protocol="http"}}'
        values: '0x10'
      - series: 'proxy_pool_proxies{{status="active",protocol="socks5"}}'
        values: '0x10'
      - series: 'proxy_pool_gateway_requests_total{{method="GET",outcome="no_proxy"}}'
        values: '0+1x10'
    alert_rule_test:
      - eval_time: 1m
        alertname: ProxyPoolEmpty
        exp_alerts: []
      - eval_time: 5m
        alertname: ProxyPoolEmpty
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: "proxy-pool has no active proxy: the gateway answers 503 to every request"
"""


@needs_promtool
def test_alerts_fire_on_the_right_series(tmp_path):
    """`promtool test rules`: pool low/empty, a failing source (not a flaky one), error ratio, notifier down."""
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(rules=json.dumps(str(CONFIG / "alerts.yml"))))
    done = promtool("test", "rules", str(tests))
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_and_dashboard_queries_use_only_exposed_metrics():
    """Every proxy_pool_* name in alerts.yml and the dashboard is a sample name Metrics exposes."""
    exposed = exposed_sample_names()
    rules = yaml.safe_load((CONFIG / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]] + dashboard_exprs()
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert used, "no proxy_pool metric referenced at all"
    assert used <= exposed, sorted(used - exposed)


def test_dashboard_covers_what_operators_asked_for():
    """The dashboard shows pool by status/protocol/country, requests by outcome, latency quantiles,
    checks by result and credits spent, all on the templated Prometheus datasource."""
    dash = json.loads((CONFIG / "grafana-dashboard.json").read_text())
    assert dash["uid"] == "proxy-pool"
    joined = "\n".join(dashboard_exprs())
    for needle in (
        "sum by (status) (proxy_pool_proxies)",
        "sum by (protocol) (proxy_pool_proxies",
        "proxy_pool_active_proxies_by_country",
        "sum by (outcome) (rate(proxy_pool_gateway_requests_total",
        "histogram_quantile(0.99, sum by (le) (rate(proxy_pool_gateway_request_duration_seconds_bucket",
        "sum by (result) (rate(proxy_pool_checks_total",
        "proxy_pool_credits_spent_total",
    ):
        assert needle in joined, needle
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"


def test_grafana_provisioning_matches_compose():
    """The provisioned datasource points at the compose Prometheus, the dashboard provider at the mounted file."""
    ds = yaml.safe_load((CONFIG / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert ds["datasources"][0]["type"] == "prometheus"
    prov = yaml.safe_load((CONFIG / "grafana/provisioning/dashboards/proxy-pool.yml").read_text())
    dash_dir = prov["providers"][0]["options"]["path"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert f"./config/grafana-dashboard.json:{dash_dir}/proxy-pool.json:ro" in grafana_volumes


def test_compose_file_publishes_only_loopback_and_mounts_existing_files():
    """Gateway on 127.0.0.1:8899 only, admin never published, each bind-mounted path exists in the repo."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"proxy-pool", "prometheus", "grafana"}
    app = services["proxy-pool"]
    assert app["build"] == "."
    assert app["ports"] == ["127.0.0.1:8899:8899"]
    assert "8898" in [str(p) for p in app.get("expose", [])]
    assert app["environment"]["PROXY_POOL_ADMIN__LISTEN"] == "0.0.0.0:8898"
    assert "PROXY_POOL_ADMIN__TOKEN" in app["environment"]
    assert any(v.endswith(":/app/plugins-contrib:ro") for v in app["volumes"])
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


# -- docker-compose.postgres.yml: two replicas on PostgreSQL behind HAProxy (no Docker engine here) ---


def _replicas_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.postgres.yml").read_text())


def test_replicas_compose_runs_two_named_gateways_on_one_postgres():
    """PostgreSQL, two gateway replicas with distinct --replica-name on the same storage.url, HAProxy,
    Prometheus and Grafana; only loopback published; every bind-mounted file exists."""
    compose = _replicas_compose()
    services = compose["services"]
    assert set(services) == {"postgres", "gateway-1", "gateway-2", "haproxy", "prometheus", "grafana"}
    assert services["postgres"]["image"].startswith("postgres:15")
    names = []
    urls = set()
    for name in ("gateway-1", "gateway-2"):
        gw = services[name]
        assert gw["build"] == "."
        assert "ports" not in gw  # reached through HAProxy only
        command = gw["command"]
        names.append(command[command.index("--replica-name") + 1])
        env = gw["environment"]
        urls.add(env["PROXY_POOL_STORAGE__URL"])
        assert env["PROXY_POOL_ADMIN__LISTEN"] == "0.0.0.0:8898" and "PROXY_POOL_ADMIN__TOKEN" in env
        assert gw["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert names == ["gateway-1", "gateway-2"]
    (url,) = urls
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    Settings.load(None, storage={"url": url})  # the settings accept it
    assert services["haproxy"]["ports"] == ["127.0.0.1:8899:8899"]
    for service in services.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_replicas_haproxy_balances_both_gateways_with_health_checks():
    """HAProxy in TCP mode (CONNECT and SOCKS pass untouched) over both replicas, checked on /healthz."""
    cfg = (CONFIG / "haproxy.cfg").read_text()
    assert re.search(r"^\s*mode tcp\s*$", cfg, re.M)
    assert re.search(r"^\s*bind :8899\s*$", cfg, re.M)
    assert "option httpchk GET /healthz" in cfg
    servers = re.findall(r"^\s*server (\S+) (\S+) check port 8898", cfg, re.M)
    assert servers == [("gateway-1", "gateway-1:8899"), ("gateway-2", "gateway-2:8899")]


def test_replicas_prometheus_scrapes_every_replica():
    """The replicas' Prometheus config scrapes both admin ports and loads the same alert rules."""
    prom = yaml.safe_load((CONFIG / "prometheus.replicas.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "proxy-pool")
    assert job["static_configs"][0]["targets"] == ["gateway-1:8898", "gateway-2:8898"]
    assert prom["rule_files"] == ["alerts.yml"]
    volumes = _replicas_compose()["services"]["prometheus"]["volumes"]
    assert "./config/prometheus.replicas.yml:/etc/prometheus/prometheus.yml:ro" in volumes


@needs_promtool
def test_replicas_prometheus_config_passes_promtool():
    done = promtool("check", "config", "config/prometheus.replicas.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_series_carries_the_replica_label_when_named():
    """With a replica name set, every sample in /metrics carries replica="NAME" (and promtool's rules hold)."""
    m = Metrics(lambda: {("active", "http"): 1}, lambda: {"DE": 1})
    m.replica = "gateway-1"
    m.request_done("GET", "ok", 0.1)
    m.credits_spent(1)
    body, _ = m.exposition()
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    assert samples and all(s.labels.get("replica") == "gateway-1" for s in samples)
    if PROMTOOL is not None:
        done = subprocess.run([PROMTOOL, "check", "metrics"], input=body.decode(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
