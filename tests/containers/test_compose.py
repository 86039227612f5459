"""docker-compose.yml and the Dockerfile, checked against the code without a Docker engine."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer._click.core import Command  # typer vendors its own click
from typer._click.exceptions import UsageError
from typer.core import TyperGroup as Group
from typer.main import get_command

from cryptostream.cli import app
from cryptostream.config import Settings
from cryptostream.topics import required_topics
from marketsim.cli import build_parser
from tests.containers.conftest import ROOT, app_services, environment, interpolate

DEFAULTS = Settings.model_fields
SERVICE_COMMANDS = {
    "topics": ["topics", "create"],
    "simulator": ["simulator"],
    "ingest": ["ingest"],
    "processor": ["processor"],
    "query": ["query"],
}


def _settings(service: dict[str, Any]) -> Settings:
    """The settings a service would run with: its compose environment over the defaults."""
    env = environment(service)
    return Settings.model_validate(
        {key.removeprefix("CSP_").lower(): value for key, value in env.items()}
    )


def _resolve(command: list[str]) -> tuple[Command, list[str], list[str]]:
    """Walk the ``csp`` command tree: (the command, its path, the remaining arguments)."""
    node: Command = get_command(app)
    path: list[str] = []
    args = list(command)
    while isinstance(node, Group) and args:
        sub = node.commands.get(args[0])
        assert sub is not None, f"`csp {' '.join([*path, args[0]])}` is not a csp subcommand"
        node, path = sub, [*path, args.pop(0)]
    return node, path, args


def test_every_app_service_runs_a_real_csp_subcommand(compose: dict[str, Any]) -> None:
    services = app_services(compose)
    assert set(services) == set(SERVICE_COMMANDS), "a pipeline service is missing or unexpected"
    for name, service in services.items():
        command = [interpolate(str(part)) for part in service["command"]]
        node, path, args = _resolve(command)
        assert path == SERVICE_COMMANDS[name], f"{name} runs `csp {' '.join(path)}`"
        assert not isinstance(node, Group), f"{name}: `csp {' '.join(path)}` is a group"
        if path == ["simulator"]:  # passes its arguments through to the simulator's own parser
            ns = build_parser().parse_args(args)
            assert ns.host == "0.0.0.0", "the simulator must listen beyond the container"
        else:  # click raises UsageError on an unknown option or argument
            node.make_context(f"csp {' '.join(path)}", args, resilient_parsing=False)


def test_a_bad_command_would_be_caught() -> None:
    with pytest.raises(AssertionError, match="not a csp subcommand"):
        _resolve(["procesor"])
    node, _path, args = _resolve(["topics", "create", "--bogus"])
    with pytest.raises(UsageError):
        node.make_context("csp topics create", args)


def test_every_environment_variable_is_a_real_setting(compose: dict[str, Any]) -> None:
    for name, service in app_services(compose).items():
        for key in environment(service):
            assert key.startswith("CSP_"), f"{name}: {key} is not a CSP_ setting"
            assert key.removeprefix("CSP_").lower() in DEFAULTS, f"{name}: {key} is no setting"
        _settings(service)  # and every value validates (types, ranges)


def test_interpolated_variables_are_settings_or_documented(compose: dict[str, Any]) -> None:
    names = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    assert names, "the file uses ${VAR:-default} for user-overridable values"
    for var in names:
        assert var.removeprefix("CSP_").lower() in DEFAULTS, f"${{{var}}} is not a setting"


def test_topic_names_and_partitions_are_the_defaults(compose: dict[str, Any]) -> None:
    for name, service in app_services(compose).items():
        settings = _settings(service)
        for field in ("topic", "dlq_topic", "partitions", "group_id", "replication_factor"):
            assert getattr(settings, field) == DEFAULTS[field].default, f"{name}: {field}"


def test_the_topics_service_creates_what_the_services_check_for(compose: dict[str, Any]) -> None:
    services = compose["services"]
    created = {(t.name, t.partitions) for t in required_topics(_settings(services["topics"]))}
    for name in ("ingest", "processor"):
        settings = _settings(services[name])
        # Both check raw.trades with CSP_PARTITIONS partitions and that the DLQ exists.
        assert (settings.topic, settings.partitions) in created, name
        assert settings.dlq_topic in {topic for topic, _ in created}, name
        condition = services[name]["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully", name
    assert services["topics"]["restart"] == "no", "a one-shot must not be restarted"
    assert ("raw.trades", 8) in created


def test_addresses_and_ports_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka_env = environment(services["kafka"])
    internal = re.search(r"INTERNAL://([\w.-]+:\d+)", kafka_env["KAFKA_ADVERTISED_LISTENERS"])
    assert internal is not None
    query = _settings(services["query"])
    assert query.query_port == DEFAULTS["query_port"].default == 3000
    assert f"127.0.0.1:{query.query_port}:{query.query_port}" in services["query"]["ports"]
    for name, service in app_services(compose).items():
        env = environment(service)
        if "CSP_KAFKA_BOOTSTRAP" in env:
            assert env["CSP_KAFKA_BOOTSTRAP"] == internal.group(1), name
            assert "kafka" in _dependencies(services, name), name
        if "CSP_REDIS_URL" in env:
            assert env["CSP_REDIS_URL"].startswith("redis://redis:6379/"), name
            assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
    simulator = build_parser().parse_args(
        [interpolate(str(a)) for a in services["simulator"]["command"][1:]]
    )
    assert environment(services["ingest"])["CSP_BINANCE_WS_URL"] == (
        f"ws://simulator:{simulator.port}"
    )
    assert services["ingest"]["depends_on"]["simulator"]["condition"] == "service_healthy"
    # The image the compose file runs for Kafka is the version the local stack runs.
    version = DEFAULTS["kafka_version"].default
    assert services["kafka"]["image"] == f"apache/kafka:${{CSP_KAFKA_VERSION:-{version}}}"


def _dependencies(services: dict[str, Any], name: str) -> set[str]:
    """Everything a service waits for, directly or through its dependencies."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dependency in services[todo.pop()].get("depends_on") or {}:
            if dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


def test_kafka_is_kraft_without_auto_topic_creation(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["kafka"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env


def test_health_checks_order_the_start(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dependency, spec in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            assert condition in ("service_healthy", "service_completed_successfully"), name
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    # A healthcheck probing a port must probe the port the service serves on.
    processor = _settings(services["processor"])
    assert str(processor.processor_metrics_port) in str(services["processor"]["healthcheck"])
    assert processor.processor_metrics_port > 0, "processors serve metrics in compose"
    assert ":3000/" in str(services["query"]["healthcheck"])


def test_the_processor_can_scale(compose: dict[str, Any]) -> None:
    processor = compose["services"]["processor"]
    for fixed in ("container_name", "ports", "hostname"):
        assert fixed not in processor, f"processor has {fixed}: --scale processor=3 would clash"
    assert "processor" not in compose["services"]["query"].get("depends_on", {})


def test_observability_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    extra = {"elasticsearch", "kibana", "kibana-setup", "filebeat", "prometheus", "grafana"}
    assert extra <= set(services)
    for name, service in services.items():
        profiles = service.get("profiles", [])
        assert profiles == (["observability"] if name in extra else []), name
    assert "5601:5601" in str(services["kibana"]["ports"])
    assert ":3000" in str(services["grafana"]["ports"]) and "3000:3000" not in str(
        services["grafana"]["ports"]
    ), "Grafana must not take the query API's host port"


# --- Dockerfile -----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_slim_base_cached_dependencies_non_root() -> None:
    steps = _instructions()
    assert [arg for op, arg in steps if op == "FROM"] == ["python:3.11-slim"]
    index = {i: (op, arg) for i, (op, arg) in enumerate(steps)}
    copies = [i for i, (op, _) in index.items() if op == "COPY"]
    first_copy = index[copies[0]][1].split()
    assert first_copy[:-1] == ["pyproject.toml"], "dependencies first: copy pyproject.toml alone"
    source_copy = next(i for i in copies if "platform" in index[i][1])
    deps = [i for i, (op, arg) in index.items() if op == "RUN" and "pip install" in arg]
    assert any(copies[0] < i < source_copy for i in deps), "no dependency layer before sources"
    assert any(i > source_copy and "--no-deps" in index[i][1] for i in deps)
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must not run as root"
    last_user = max(i for i, (op, _) in index.items() if op == "USER")
    assert all(op != "RUN" for i, (op, _) in index.items() if i > last_user)
    entry = next(arg for op, arg in steps if op == "ENTRYPOINT")
    assert entry == '["csp"]', "one image, the command picks the service"


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("**")] == "**", "ignore everything but an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        "platform",
        "simulator",
        "benchmarks/experiments",
    }
