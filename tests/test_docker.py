"""docker/compose.yaml against docker/Dockerfile, read as text: no Docker engine runs here.

What broke for an operator: a volume mounted on a directory absent from the image (created by
root, unwritable by uid 10001: a crash loop), an obsolete ``version:``, an unpinned image, Docker's
10 s stop timeout cutting the 20 s drain, every replica migrating at once, no token-secret, master
key or LMTP set-up. Each is a check below.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from mailbridge.runtime import DRAIN_SECONDS
from mailbridge.settings import Settings

DOCKER = Path(__file__).resolve().parent.parent / "docker"
ENV_ONLY = {"MAILBRIDGE_TOKEN_SECRET", "MAILBRIDGE_MASTER_KEY", "MAILBRIDGE_CONFIG"}  # read outside Settings


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the final stage, continuation lines joined, comments dropped."""
    text = (DOCKER / "Dockerfile").read_text()
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest))
    return stages[-1]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def mailbridge_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc for name, svc in compose()["services"].items() if svc.get("image") == "mailbridge:local"
    }


def image_user() -> tuple[str, str]:
    uid = gid = ""
    for word, rest in dockerfile():
        if word == "RUN" and "useradd" in rest:
            uid = re.search(r"--uid (\d+)", rest).group(1)  # type: ignore[union-attr]
        if word == "USER":
            uid_user, _, gid = rest.partition(":")
            assert uid_user == uid, "USER must be the uid useradd created"
    return uid, gid or uid


def owned_directories(uid: str) -> set[str]:
    """Directories the image creates owned by *uid* (``install -d -o UID …``)."""
    found: set[str] = set()
    for word, rest in dockerfile():
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            args = shlex.split(command)
            if args[:2] != ["install", "-d"] or "-o" not in args:
                continue
            if args[args.index("-o") + 1] != uid:
                continue
            skip = False
            for arg in args[2:]:
                if skip:
                    skip = False
                elif arg in ("-o", "-g", "-m"):
                    skip = True
                elif arg.startswith("/"):
                    found.add(arg)
    return found


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_no_obsolete_version_key_and_every_image_pinned() -> None:
    data = compose()
    assert "version" not in data  # Compose v2 warns: obsolete
    for name, svc in data["services"].items():
        image = svc.get("image", "")
        if svc.get("build"):
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), (
            f"{name}: {image} is not pinned"
        )


def test_every_mounted_directory_exists_in_the_image_owned_by_its_user() -> None:
    uid, gid = image_user()
    assert uid == "10001"
    owned = owned_directories(uid)
    services = mailbridge_services()
    assert set(services) == {"migrate", "mailbridge"}
    for name, svc in services.items():
        assert svc["user"] == f"{uid}:{gid}", name
        targets = [volume.split(":")[1] for volume in svc["volumes"]]
        assert image_env()["MAILBRIDGE_DATA_DIR"] in targets
        for target in targets:
            # a nested mount point too: absent from the image, Docker would create it as root
            assert target in owned, f"{name}: {target} is not created in the image for uid {uid}"
        declared = next(rest for word, rest in dockerfile() if word == "VOLUME")
        assert set(targets) <= set(yaml.safe_load(declared))
        for volume in svc["volumes"]:
            assert volume.split(":")[0] in compose()["volumes"]


def test_the_stop_timeout_covers_the_drain() -> None:
    grace = mailbridge_services()["mailbridge"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match and int(match.group(1)) >= DRAIN_SECONDS + 5
    assert ("STOPSIGNAL", "SIGTERM") in dockerfile()


def test_one_migration_before_the_replicas() -> None:
    services = mailbridge_services()
    migrate, serve = services["migrate"], services["mailbridge"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert serve["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "--migrate" not in serve["command"]
    cmd = next(rest for word, rest in dockerfile() if word == "CMD")
    assert yaml.safe_load(cmd) == ["serve"]  # a replica started alone never migrates PostgreSQL


def test_environment_names_are_settings_and_the_shared_secrets_are_set_up() -> None:
    fields = {f"MAILBRIDGE_{name.upper()}" for name in Settings.model_fields}
    env = mailbridge_services()["mailbridge"]["environment"]
    for name in env:
        assert name in fields or name in ENV_ONLY, f"{name} is no setting"
    for name in image_env():
        assert not name.startswith("MAILBRIDGE_") or name in fields, name
    assert {"MAILBRIDGE_TOKEN_SECRET", "MAILBRIDGE_MASTER_KEY", "MAILBRIDGE_LMTP"} <= set(env)
    assert "MAILBRIDGE_TEMPLATES_DIR" not in image_env()  # templates ship in the wheel
    db = compose()["services"]["db"]["environment"]
    url = env["MAILBRIDGE_DATABASE_URL"]
    assert f"{db['POSTGRES_USER']}:{db['POSTGRES_PASSWORD']}@db:5432/{db['POSTGRES_DB']}" in url


def test_the_healthcheck_asks_a_route_that_needs_no_key(sqlite_services: Any) -> None:
    from fastapi.testclient import TestClient

    from mailbridge.api.app import create_app

    check = next(rest for word, rest in dockerfile() if word == "HEALTHCHECK")
    route = re.search(r"http://127\.0\.0\.1:8080(/\w+)", check).group(1)  # type: ignore[union-attr]
    assert image_env()["MAILBRIDGE_HTTP_LISTEN"].endswith(":8080")
    with TestClient(create_app(sqlite_services)) as client:  # no Authorization header
        assert client.get(route).status_code == 200
