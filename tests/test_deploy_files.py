"""Offline checks of the deployment files (no network, no Docker, no cluster).

- docker-compose.yml against the Compose specification (the JSON schema that ships inside
  check-jsonschema), then what the schema cannot know: every service is built from its own
  Dockerfile, starts after `init`, has a health check, publishes its default port, and each
  stateful service gets its own database;
- every Dockerfile runs its service's console script as a non-root user, and `.dockerignore`
  lets in what the Dockerfiles copy and keeps out local state;
- deploy/kubernetes: every file parses, kustomization.yaml lists files that exist, and every
  Deployment probes /readyz and /healthz.

The expected ports and which services are stateful come from the installed services
(`crm.services` entry points), not from a copy in this file.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
from ruamel.yaml import YAML

from crm_loyalty.program import parse_program
from crm_notify.rules import parse_rules
from crm_shared.installed import installed_services

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
INIT_DOCKERFILE = ROOT / "deploy" / "compose" / "Dockerfile.init"
POSTGRES_INIT_SQL = ROOT / "deploy" / "compose" / "postgres-init.sql"
KUBERNETES = ROOT / "deploy" / "kubernetes"
ONE_SHOT = "init"  # the compose service that runs to completion: no health check


# --- what the code says ------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceFacts:
    name: str
    port: int
    stateful: bool

    @property
    def directory(self) -> Path:
        return ROOT / "services" / self.name

    @property
    def dockerfile(self) -> Path:
        return self.directory / "Dockerfile"

    @property
    def database(self) -> str:
        return f"crm_{self.name}"


@cache
def services() -> tuple[ServiceFacts, ...]:
    found: list[ServiceFacts] = []
    for descriptor in installed_services():
        port = descriptor.settings.model_fields["http_port"].default
        assert isinstance(port, int), f"{descriptor.name}: http_port has no integer default"
        found.append(ServiceFacts(descriptor.name, port, descriptor.migrations is not None))
    return tuple(found)


def service_directories() -> set[str]:
    return {p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml")}


def console_scripts(service: ServiceFacts) -> dict[str, str]:
    with (service.directory / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    scripts: dict[str, str] = project.get("scripts", {})
    return scripts


def test_the_installed_services_are_the_service_directories() -> None:
    installed = {s.name for s in services()}
    assert installed == service_directories(), (
        "services/ and the installed `crm.services` entry points disagree "
        "(run `pip install -e services/<name>`?)"
    )
    assert len({s.port for s in services()}) == len(services()), "two services share a port"


# --- YAML ----------------------------------------------------------------------------------------
def yaml_documents(path: Path) -> list[Any]:
    """Every non-empty document of a YAML file (safe loader: plain dicts, lists and scalars)."""
    loader = YAML(typ="safe", pure=True)
    return [document for document in loader.load_all(path) if document is not None]


def yaml_document(path: Path) -> Any:
    documents = yaml_documents(path)
    assert len(documents) == 1, f"{path.relative_to(ROOT)}: expected one YAML document"
    return documents[0]


# --- docker-compose.yml --------------------------------------------------------------------------
@cache
def compose() -> dict[str, Any]:
    document = yaml_document(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def compose_service(name: str) -> dict[str, Any]:
    all_services: dict[str, Any] = compose()["services"]
    assert name in all_services, f"docker-compose.yml has no service {name!r}"
    service: dict[str, Any] = all_services[name]
    return service


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment as strings, from either the mapping or the list form."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {key: value for key, _, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text("utf-8"))
    return schema


def compose_errors(document: Any) -> list[str]:
    """The Compose specification's complaints about `document`, validated with the draft the
    schema declares in `$schema`."""
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    messages = [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(top level)'}: {error.message}"
        for error in validator.iter_errors(document)
    ]
    return sorted(messages)


def test_compose_file_follows_the_compose_specification() -> None:
    errors = compose_errors(compose())
    assert not errors, "docker-compose.yml breaks the Compose specification:\n" + "\n".join(errors)


def test_the_compose_schema_check_rejects_a_broken_file() -> None:
    """The check above must be able to fail: a mistyped depends_on condition is an error."""
    broken = copy.deepcopy(compose())
    name = services()[0].name
    broken["services"][name]["depends_on"] = {ONE_SHOT: {"condition": "service_finished"}}
    assert compose_errors(broken), "the Compose schema accepted an unknown depends_on condition"


def test_every_service_is_built_from_its_own_dockerfile() -> None:
    for service in services():
        build = compose_service(service.name).get("build")
        expected = {"context": ".", "dockerfile": f"services/{service.name}/Dockerfile"}
        assert build == expected, f"{service.name}: build is {build}, expected {expected}"
        assert service.dockerfile.is_file(), f"{service.dockerfile.relative_to(ROOT)} is missing"
    init_build = compose_service(ONE_SHOT).get("build")
    assert init_build == {"context": ".", "dockerfile": "deploy/compose/Dockerfile.init"}
    assert INIT_DOCKERFILE.is_file()


def test_every_long_running_compose_service_has_a_healthcheck() -> None:
    for name, service in compose()["services"].items():
        if name == ONE_SHOT:
            assert service.get("restart") == "no", "init runs once: it must not be restarted"
            continue
        check = service.get("healthcheck")
        assert isinstance(check, dict), f"{name} has no healthcheck"
        assert check.get("test"), f"{name}: healthcheck without a test"
        assert not check.get("disable"), f"{name}: healthcheck disabled"
    for service in services():
        test = compose_service(service.name)["healthcheck"]["test"]
        command = " ".join(test) if isinstance(test, list) else str(test)
        assert "/readyz" in command, f"{service.name}: the compose health check must use /readyz"


def test_kafka_runs_kraft_and_never_creates_topics_itself() -> None:
    kafka = environment(compose_service("kafka"))
    assert kafka.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false"
    assert set(kafka.get("KAFKA_PROCESS_ROLES", "").split(",")) == {"broker", "controller"}
    assert kafka.get("KAFKA_ADVERTISED_LISTENERS") == "PLAINTEXT://kafka:9092"
    assert "PLAINTEXT://:9092" in kafka.get("KAFKA_LISTENERS", "").split(",")
    assert kafka.get("KAFKA_CONTROLLER_LISTENER_NAMES") == "CONTROLLER"
    assert kafka.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").startswith(
        f"{kafka.get('KAFKA_NODE_ID')}@"
    )
    assert kafka.get("CLUSTER_ID"), "the image formats KRaft storage with CLUSTER_ID"
    for name in [s.name for s in services()] + [ONE_SHOT]:
        env = environment(compose_service(name))
        assert env.get("CRM_KAFKA_BOOTSTRAP") == "kafka:9092", name
        assert env.get("CRM_KAFKA_ENABLE_IDEMPOTENCE") == "true", f"{name}: keep idempotence on"


def test_services_start_after_init_completed() -> None:
    for service in services():
        depends_on = compose_service(service.name).get("depends_on", {})
        assert isinstance(depends_on, dict), f"{service.name}: depends_on needs conditions"
        assert depends_on.get(ONE_SHOT) == {"condition": "service_completed_successfully"}, (
            f"{service.name} must wait for init to complete"
        )
    init_depends_on = compose_service(ONE_SHOT).get("depends_on", {})
    for infrastructure in ("kafka", "postgres"):
        assert init_depends_on.get(infrastructure) == {"condition": "service_healthy"}


def test_published_ports_are_the_default_ports_on_loopback() -> None:
    for service in services():
        compose_entry = compose_service(service.name)
        assert compose_entry.get("ports") == [f"127.0.0.1:{service.port}:{service.port}"]
        port = environment(compose_entry).get("CRM_HTTP_PORT", str(service.port))
        assert port == str(service.port), f"{service.name}: CRM_HTTP_PORT overridden"


def test_each_stateful_service_has_its_own_database_and_init_migrates_it() -> None:
    sql = POSTGRES_INIT_SQL.read_text("utf-8")
    init_command = " ".join(str(part) for part in compose_service(ONE_SHOT)["command"])
    assert "crm-admin create-topics" in init_command
    databases: set[str] = set()
    for service in services():
        url = environment(compose_service(service.name)).get("CRM_DATABASE_URL")
        if not service.stateful:
            assert url is None, f"{service.name} is stateless: it gets no database"
            continue
        assert url is not None, f"{service.name} has no CRM_DATABASE_URL"
        parts = urlsplit(url)
        assert parts.scheme == "postgresql", url
        assert parts.hostname == "postgres", url
        assert parts.path == f"/{service.database}", f"{service.name} must use its own database"
        databases.add(parts.path)
        assert re.search(rf"CREATE DATABASE {service.database}\b", sql), (
            f"postgres-init.sql does not create {service.database}"
        )
        assert f"crm-admin migrate {service.name} " in init_command, (
            f"init does not migrate {service.name}"
        )
    assert len(databases) == sum(s.stateful for s in services()), "a database is shared"


# --- Dockerfiles ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile: continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, f"{path}: ends inside a continued line"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def env_assignments(instructions: list[Instruction]) -> dict[str, str]:
    assignments: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", instruction.arguments):
                assignments[key] = value
    return assignments


def exec_form(instruction: Instruction) -> list[str]:
    try:
        parsed = json.loads(instruction.arguments)
    except json.JSONDecodeError:
        parsed = None
    assert isinstance(parsed, list), f"{instruction.keyword} must be in exec (JSON) form"
    assert all(isinstance(p, str) for p in parsed), f"{instruction.keyword}: not all strings"
    return parsed


def pip_install(instructions: list[Instruction]) -> str:
    runs = [i.arguments for i in instructions if i.keyword == "RUN"]
    runs = [run for run in runs if "pip install" in run]
    assert len(runs) == 1, "expected one `pip install`"
    return runs[0]


def test_every_dockerfile_runs_its_console_script() -> None:
    for service in services():
        instructions = dockerfile_instructions(service.dockerfile)
        commands = [i for i in final_stage(instructions) if i.keyword == "CMD"]
        assert commands, f"{service.name}: no CMD"
        command = exec_form(commands[-1])
        scripts = console_scripts(service)
        assert command == [f"crm-{service.name}"], f"{service.name}: CMD is {command}"
        assert command[0] in scripts, (
            f"{service.name}: CMD runs {command[0]}, which [project.scripts] does not declare"
        )


def test_every_dockerfile_installs_with_the_constraints_and_runs_unprivileged() -> None:
    for service in services():
        instructions = dockerfile_instructions(service.dockerfile)
        bases = {i.arguments for i in instructions if i.keyword == "ARG"}
        assert "PYTHON_IMAGE=python:3.11-slim" in bases, f"{service.name}: base image"
        install = pip_install(instructions).split()
        assert "--no-cache-dir" in install, service.name
        assert install[install.index("-c") + 1] == "constraints.txt", service.name
        assert {"./shared", f"./services/{service.name}"} <= set(install), service.name

        runtime = final_stage(instructions)
        users = [i.arguments for i in runtime if i.keyword == "USER"]
        assert users, f"{service.name}: the runtime stage runs as root"
        assert users[-1].split(":")[0] not in {"root", "0"}, f"{service.name} runs as root"

        env = env_assignments(runtime)
        assert env.get("CRM_HTTP_HOST") == "0.0.0.0", f"{service.name} must bind all interfaces"
        assert env.get("CRM_HTTP_PORT") == str(service.port), service.name
        assert env.get("CRM_LOG_JSON") == "true", service.name
        exposed = [i.arguments for i in runtime if i.keyword == "EXPOSE"]
        assert exposed == [str(service.port)], f"{service.name}: EXPOSE {exposed}"
        checks = [i.arguments for i in runtime if i.keyword == "HEALTHCHECK"]
        assert len(checks) == 1, f"{service.name}: expected one HEALTHCHECK"
        assert "/healthz" in checks[0], f"{service.name}: HEALTHCHECK must GET /healthz"


def test_the_init_image_installs_every_service() -> None:
    """`crm-admin migrate <name>` finds a service through its entry point: all must be there."""
    instructions = dockerfile_instructions(INIT_DOCKERFILE)
    install = set(pip_install(instructions).split())
    assert "./shared" in install
    for service in services():
        assert f"./services/{service.name}" in install, f"Dockerfile.init misses {service.name}"
    users = [i.arguments for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "Dockerfile.init: the runtime stage runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, "Dockerfile.init runs as root"


# --- .dockerignore -------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression (Go's filepath.Match plus `**`)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    return re.compile("".join(out))


@cache
def dockerignore_rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (ROOT / ".dockerignore").read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        cleaned = str(PurePosixPath(line.removeprefix("!").lstrip("/")))
        rules.append((negated, _pattern_regex(cleaned)))
    return tuple(rules)


def in_build_context(relative: str) -> bool:
    """Whether Docker sends `relative` (a path from the root): the last pattern that matches
    the path or one of its parent directories decides."""
    parts = PurePosixPath(relative).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, regex in dockerignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included


def copied_sources(dockerfile: Path) -> Iterator[Path]:
    for instruction in dockerfile_instructions(dockerfile):
        if instruction.keyword != "COPY" or instruction.arguments.startswith("--from"):
            continue
        *sources, _destination = instruction.arguments.split()
        for source in sources:
            yield ROOT / source


def package_files(source: Path) -> Iterator[Path]:
    """What an install from `source` needs: pyproject.toml and everything under src/."""
    if source.is_file():
        yield source
        return
    yield source / "pyproject.toml"
    for path in (source / "src").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def test_dockerignore_keeps_local_state_out_and_lets_the_sources_in() -> None:
    for leaked in (
        ".venv/bin/python",
        ".state/infra.env",
        ".git/HEAD",
        "shared/src/crm_shared/__pycache__/cli.cpython-311.pyc",
        ".mypy_cache/3.11/cache.db",
        "bench/results/latest.json",
        f"services/{services()[0].name}/tests/test_app.py",
    ):
        assert not in_build_context(leaked), f".dockerignore lets {leaked} into the build"
    dockerfiles = [s.dockerfile for s in services()] + [INIT_DOCKERFILE]
    for dockerfile in dockerfiles:
        for source in copied_sources(dockerfile):
            assert source.exists(), f"{dockerfile.relative_to(ROOT)} copies missing {source}"
            for path in package_files(source):
                relative = path.relative_to(ROOT).as_posix()
                assert in_build_context(relative), f".dockerignore drops {relative}"


# --- deploy/kubernetes ---------------------------------------------------------------------------
@cache
def manifests() -> dict[str, list[Any]]:
    return {
        path.name: yaml_documents(path)
        for path in sorted(KUBERNETES.iterdir())
        if path.suffix in {".yaml", ".yml"}
    }


def resources_of_kind(kind: str) -> list[dict[str, Any]]:
    return [
        document
        for documents in manifests().values()
        for document in documents
        if document.get("kind") == kind
    ]


def test_every_kubernetes_file_parses_as_named_resources() -> None:
    assert "kustomization.yaml" in manifests()
    for name, documents in manifests().items():
        assert documents, f"{name} is empty"
        for document in documents:
            assert isinstance(document, dict), f"{name}: a document is not a mapping"
            assert document.get("apiVersion"), f"{name}: a document has no apiVersion"
            assert document.get("kind"), f"{name}: a document has no kind"
            if document["kind"] != "Kustomization":
                assert document.get("metadata", {}).get("name"), f"{name}: unnamed resource"


def test_kustomization_lists_every_manifest_and_only_existing_files() -> None:
    listed: list[str] = yaml_document(KUBERNETES / "kustomization.yaml")["resources"]
    for entry in listed:
        assert (KUBERNETES / entry).is_file(), f"kustomization.yaml lists missing {entry}"
    unlisted = set(manifests()) - set(listed) - {"kustomization.yaml"}
    templates = {name for name in unlisted if name.endswith(".example.yaml")}
    missing = sorted(unlisted - templates)
    assert not missing, f"manifests missing from kustomization.yaml: {missing}"


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = resource["spec"]["template"]["spec"]["containers"]
    return found


def test_every_deployment_probes_readyz_and_healthz() -> None:
    deployments = resources_of_kind("Deployment")
    assert deployments, "no Deployment under deploy/kubernetes"
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        for container in containers(deployment):
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                http = container.get(probe, {}).get("httpGet", {})
                assert http.get("path") == path, f"{name}: {probe} must GET {path}"
                declared = {p.get("name") for p in container.get("ports", [])}
                declared |= {p.get("containerPort") for p in container.get("ports", [])}
                assert http.get("port") in declared, f"{name}: {probe} probes an undeclared port"


def test_every_service_has_a_hardened_deployment_and_a_service() -> None:
    deployments = {d["metadata"]["name"]: d for d in resources_of_kind("Deployment")}
    kube_services = {s["metadata"]["name"]: s for s in resources_of_kind("Service")}
    for service in services():
        assert service.name in deployments, f"no Deployment for {service.name}"
        assert service.name in kube_services, f"no Service for {service.name}"
        pod = deployments[service.name]["spec"]["template"]["spec"]
        (container,) = containers(deployments[service.name])
        assert container["image"] == f"crm-{service.name}"
        assert [p["containerPort"] for p in container["ports"]] == [service.port]
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["CRM_HTTP_PORT"]["value"] == str(service.port)
        assert ("CRM_DATABASE_URL" in env) == service.stateful, f"{service.name}: database"
        assert pod["securityContext"]["runAsNonRoot"] is True, service.name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, service.name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, service.name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), service.name
        ports = kube_services[service.name]["spec"]["ports"]
        assert [p["port"] for p in ports] == [service.port], service.name


def test_configmap_holds_strings_and_the_production_settings() -> None:
    (config,) = [c for c in resources_of_kind("ConfigMap") if c["metadata"]["name"] == "crm-config"]
    data: dict[str, Any] = config["data"]
    not_strings = sorted(key for key, value in data.items() if not isinstance(value, str))
    assert not not_strings, f"ConfigMap values must be quoted strings: {not_strings}"
    assert data["CRM_ENV"] == "production"
    assert data["CRM_TOPIC_REPLICATION_FACTOR"] == "3"
    assert data["CRM_KAFKA_ENABLE_IDEMPOTENCE"] == "true"
    assert data["CRM_HTTP_HOST"] == "0.0.0.0"


def test_init_job_creates_topics_and_migrates_every_stateful_service() -> None:
    (job,) = resources_of_kind("Job")
    (container,) = containers(job)
    assert container["image"] == "crm-init"
    script = " ".join(container.get("command", []) + container.get("args", []))
    assert "crm-admin create-topics" in script
    for service in services():
        migrates = f"crm-admin migrate {service.name} " in script
        assert migrates == service.stateful, f"crm-init and {service.name}'s migrations"


def test_the_secret_template_has_every_key_the_manifests_read() -> None:
    secrets = resources_of_kind("Secret")
    assert len(secrets) == 1, "one Secret template (secret.example.yaml)"
    template_keys = set(secrets[0].get("stringData", {})) | set(secrets[0].get("data", {}))
    read: set[str] = set()
    for resource in resources_of_kind("Deployment") + resources_of_kind("Job"):
        for container in containers(resource):
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["name"] == secrets[0]["metadata"]["name"]
                    read.add(reference["key"])
    assert read <= template_keys, f"keys missing from the Secret template: {read - template_keys}"


def test_loyalty_runs_the_mounted_program_and_it_is_valid() -> None:
    (program,) = [
        c for c in resources_of_kind("ConfigMap") if c["metadata"]["name"] == "crm-loyalty-program"
    ]
    parsed = parse_program(program["data"]["program.yaml"], "loyalty-program.yaml")
    assert parsed.tiers.levels[0].threshold == 0
    (deployment,) = [
        d for d in resources_of_kind("Deployment") if d["metadata"]["name"] == "loyalty"
    ]
    (container,) = containers(deployment)
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert env["CRM_PROGRAM_FILE"] == f"{mounts['program']}/program.yaml"
    assert volumes["program"]["configMap"]["name"] == "crm-loyalty-program"


def test_notify_runs_the_mounted_rules_and_they_are_valid() -> None:
    (rules,) = [
        c for c in resources_of_kind("ConfigMap") if c["metadata"]["name"] == "crm-notify-rules"
    ]
    parsed = parse_rules(rules["data"]["rules.yaml"], "notify-rules.yaml")
    assert [t.name for t in parsed.triggers] == ["welcome"]
    (deployment,) = [
        d for d in resources_of_kind("Deployment") if d["metadata"]["name"] == "notify"
    ]
    (container,) = containers(deployment)
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert env["CRM_RULES_FILE"] == f"{mounts['rules']}/rules.yaml"
    assert volumes["rules"]["configMap"]["name"] == "crm-notify-rules"
