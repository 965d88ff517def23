"""compose.yaml, the Dockerfile, monitoring/ and deploy/circus.ini name only things that exist.

No Docker engine runs where these tests run, so this is what keeps compose.yaml honest: every module it
runs, every file it mounts, every port Prometheus scrapes, every healthcheck and restart policy.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.broadcaster.settings import BroadcasterSettings
from services.common.auth import load_key_table
from services.common.db import ALEMBIC_INI
from services.common.env import instruments_file
from services.ingest.settings import IngestSettings
from services.matcher.settings import MatcherSettings
from services.persister.settings import PersisterSettings
from tests.processes import REPO_ROOT

COMPOSE = REPO_ROOT / "compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
PROMETHEUS = REPO_ROOT / "monitoring" / "prometheus.yml"
DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "dashboards" / "trading-engine.json"
ENGINE_SERVICES = ("ingest", "matcher", "persister", "broadcaster")
# The matchers: compose runs two (leases spread the instruments and fail over, docs/scale-out.md).
MATCHERS = ("matcher", "matcher-2")
ONE_SHOT = ("migrate",)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(load(COMPOSE))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def command_words(service: dict[str, Any]) -> list[str]:
    """The command as words, the words of an `sh -c` script included."""
    command = service.get("command", [])
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] == ["sh", "-c"]:
        words = words[:2] + shlex.split(words[2].replace("$$", "$"))
    return words


def python_modules(words: list[str]) -> list[str]:
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == "-m"]


def module_exists(module: str) -> bool:
    """`python -m module` runs code of this repository: a package with __main__.py or a module with a main guard."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not Path(spec.origin).is_relative_to(REPO_ROOT):
        return False
    if spec.submodule_search_locations:
        return (Path(spec.origin).parent / "__main__.py").exists()
    return 'if __name__ == "__main__":' in Path(spec.origin).read_text()


def matcher_settings(environment: dict[str, Any]) -> MatcherSettings:
    """A matcher's settings in its container: the defaults, plus what compose sets that picks its id and port."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MATCHER_METRICS_PORT", "MATCHER_WORKER_INDEX", "MATCHER_CONSUMER", "INSTRUMENTS_FILE"):
            patch.delenv(name, raising=False)
        for name in ("MATCHER_WORKER_INDEX", "MATCHER_CONSUMER"):
            if name in environment:
                patch.setenv(name, str(environment[name]))
        return MatcherSettings.from_env()


def settings_port(service: str, environment: dict[str, Any] | None = None) -> int:
    """The port a service listens on in a container: its from_env() default (compose sets no *_PORT)."""
    if service in MATCHERS:
        return matcher_settings(environment or {}).metrics_port
    with pytest.MonkeyPatch.context() as patch:
        for name in ("INGEST_PORT", "BROADCASTER_PORT", "PERSISTER_METRICS_PORT",
                     "PERSISTER_WORKER_INDEX", "INSTRUMENTS_FILE", "API_KEYS_FILE"):
            patch.delenv(name, raising=False)
        if service == "ingest":
            return IngestSettings.from_env().port
        if service == "broadcaster":
            return BroadcasterSettings.from_env().port
        return PersisterSettings.from_env().metrics_port


# compose.yaml -----------------------------------------------------------------------------------------


def test_every_command_runs_a_module_of_the_repo(services: dict[str, dict[str, Any]]) -> None:
    ran = {}
    for name, service in services.items():
        if "build" not in service:
            continue  # third-party images
        words = command_words(service)
        assert words and words[0] in ("python", "sh"), (name, words)
        modules = python_modules(words)
        assert len(modules) == 1 and module_exists(modules[0]), (name, modules)
        ran[name] = modules[0]
    assert ran == {"migrate": "services.common.db", "matcher-2": "services.matcher",
                   **{s: f"services.{s}" for s in ENGINE_SERVICES}}


def test_every_service_is_supervised(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), name


def test_engine_healthchecks_probe_the_right_endpoint(services: dict[str, dict[str, Any]]) -> None:
    wanted = {"ingest": "/readyz", "broadcaster": "/readyz", "matcher": "/healthz", "matcher-2": "/healthz",
              "persister": "/healthz"}
    for name, path in wanted.items():
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{settings_port(name, services[name]['environment'])}{path}" in probe, name
        assert "timeout=" in probe, name  # a hung service must fail the check, not hang it


def test_engine_services_listen_beyond_localhost_and_wait_for_their_dependencies(
        services: dict[str, dict[str, Any]]) -> None:
    hosts = {"ingest": "INGEST_HOST", "broadcaster": "BROADCASTER_HOST", "matcher": "MATCHER_METRICS_HOST",
             "matcher-2": "MATCHER_METRICS_HOST", "persister": "PERSISTER_METRICS_HOST"}
    for name in (*ENGINE_SERVICES, "matcher-2"):
        service = services[name]
        env = service["environment"]
        assert env[hosts[name]] == "0.0.0.0", name  # else nothing outside the container reaches it
        assert env["REDIS_URL"].startswith("redis://redis:"), name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["image"] == services["migrate"]["image"], name
    for name in ("ingest", *MATCHERS, "persister"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "@postgres:" in services[name]["environment"]["DATABASE_URL"]


def test_published_ports_match_the_settings(services: dict[str, dict[str, Any]]) -> None:
    for name in ("ingest", "broadcaster", *MATCHERS):
        port = settings_port(name, services[name]["environment"])
        assert services[name]["ports"] == [f"127.0.0.1:{port}:{port}"], name


def test_the_matchers_hold_leases_under_ids_and_ports_of_their_own(services: dict[str, dict[str, Any]]) -> None:
    matchers = [matcher_settings(services[name]["environment"]) for name in MATCHERS]
    assert [m.consumer for m in matchers] == ["matcher-1", "matcher-2"]
    assert [m.metrics_port for m in matchers] == [9101, 9201]  # CONTRACT.md: MATCHER_METRICS_PORT + 100 x (N - 1)


def test_ingest_and_broadcaster_refuse_the_demo_keys_unless_allowed(services: dict[str, dict[str, Any]]) -> None:
    for name in ("ingest", "broadcaster"):
        # The operator's ALLOW_DEMO_KEYS, 0 (refused) when unset.
        assert services[name]["environment"]["ALLOW_DEMO_KEYS"] == "${ALLOW_DEMO_KEYS:-0}", name
        assert "API_KEYS_FILE" not in services[name]["environment"], name  # so the image's demo set, refused
    assert re.search(r"^ENV ALLOW_DEMO_KEYS=0$", DOCKERFILE.read_text(), re.M)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("API_KEYS_FILE", raising=False)
        patch.setenv("ALLOW_DEMO_KEYS", "0")
        ingest, broadcaster = IngestSettings.from_env(), BroadcasterSettings.from_env()
        assert not ingest.allow_demo_keys and not broadcaster.allow_demo_keys
        assert load_key_table(ingest.api_keys_file).has_demo_keys()
        assert load_key_table(broadcaster.api_keys_file).has_demo_keys()
        patch.delenv("ALLOW_DEMO_KEYS")
        assert IngestSettings.from_env().allow_demo_keys and BroadcasterSettings.from_env().allow_demo_keys


def test_persister_scales_with_distinct_stable_names(services: dict[str, dict[str, Any]]) -> None:
    persister = services["persister"]
    # Published ports would collide between replicas: Prometheus reaches each one on the network.
    assert "ports" not in persister and "container_name" not in persister
    assert persister["expose"] == [str(settings_port("persister"))]
    words = command_words(persister)
    assert words[:2] == ["sh", "-c"]
    script = persister["command"][2]
    # `$$` is compose's escape for `$`: the shell, not compose, expands the hostname.
    assert "PERSISTER_CONSUMER=persister-$$(hostname)" in script and "exec python -m services.persister" in script
    env = persister["environment"]
    assert "PERSISTER_CONSUMER" not in env and "PERSISTER_WORKER_INDEX" not in env
    assert "PERSISTER_METRICS_PORT" not in env


def test_redis_is_durable(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert "redis-data:/data" in services["redis"]["volumes"]
    text = COMPOSE.read_text()
    assert "fsync" in text[: text.index("command: [\"redis-server\"")], "the fsync policy is documented"


def test_mounted_files_exist(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    named = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO_ROOT / source).exists(), (name, source)
            else:
                assert source in named, (name, source)
        build = service.get("build")
        if build is not None:
            assert build == "." and DOCKERFILE.exists()


def test_grafana_provisioning(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    provisioning = REPO_ROOT / mounts["./monitoring/grafana/provisioning"].replace(
        "/etc/grafana/provisioning", "monitoring/grafana/provisioning")
    [datasource] = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    prometheus_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"
    [provider] = load(provisioning / "dashboards" / "engine.yml")["providers"]
    assert provider["options"]["path"] == mounts["./monitoring/grafana/dashboards"]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_prometheus_scrapes_every_engine_service(services: dict[str, dict[str, Any]]) -> None:
    assert "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    config = load(PROMETHEUS)
    targets: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            found.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            assert dns["type"] == "A"
            found.update(f"{name}:{dns['port']}" for name in dns["names"])
        assert job.get("metrics_path", "/metrics") == "/metrics"
    expected = {name: {f"{name}:{settings_port(name)}"} for name in ENGINE_SERVICES}
    expected["matcher"] = {f"{name}:{settings_port(name, services[name]['environment'])}" for name in MATCHERS}
    assert targets == expected


# Dockerfile ----------------------------------------------------------------------------------------


def test_dockerfile_copies_what_the_services_read() -> None:
    copied: set[str] = set()
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            copied.update(s.rstrip("/") for s in sources)
    for path in copied:
        assert (REPO_ROOT / path).exists(), path
    # What the services open at run time, found relative to the code (services/common/env.py, db.py).
    with pytest.MonkeyPatch.context() as patch:
        for name in ("INSTRUMENTS_FILE", "API_KEYS_FILE"):
            patch.delenv(name, raising=False)
        ingest = IngestSettings.from_env()
    read = [instruments_file(), ingest.api_keys_file, ALEMBIC_INI, ALEMBIC_INI.parent / "migrations",
            REPO_ROOT / "services", REPO_ROOT / "pyproject.toml"]
    for needed in read:
        assert needed.exists() and needed.relative_to(REPO_ROOT).parts[0] in copied, needed
    text = DOCKERFILE.read_text()
    assert re.search(r"^WORKDIR /app$", text, re.M) and "PYTHONPATH=/app" in text
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}  # type: ignore[union-attr]
    assert exposed == {settings_port(s) for s in ENGINE_SERVICES}


# circus ----------------------------------------------------------------------------------------------


def test_circus_runs_only_modules_that_exist() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO_ROOT / "deploy" / "circus.ini")
    watchers = {s.removeprefix("watcher:"): parser[s]["cmd"] for s in parser.sections() if s.startswith("watcher:")}
    assert set(watchers) == set(ENGINE_SERVICES)
    for name, cmd in watchers.items():
        [module] = python_modules(cmd.split())
        assert module == f"services.{name}" and module_exists(module), (name, cmd)
