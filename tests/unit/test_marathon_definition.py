"""The shipped Marathon app definition, its rendering, and the project's own checks."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devtools import marathon

# The git blob id recorded in devtools/marathon_schema/README.md.
APP_SCHEMA_BLOB = "36dee454e2c86fc16666557f7116eb5672342555"


def rendered(strategy: str = "seamless", **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "app_id": marathon.DEFAULT_APP_ID,
        "instances": 3,
        "image": marathon.image_reference("acme", "1.2.3"),
        "strategy": strategy,
    }
    args.update(overrides)
    return marathon.render_app(**args)


def errors_of(app: dict[str, Any]) -> list[str]:
    with pytest.raises(marathon.AppDefinitionError) as info:
        marathon.validate_app(app)
    return info.value.errors


def test_vendored_schema_is_the_unmodified_marathon_file() -> None:
    data = marathon.SCHEMA_FILE.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert blob == APP_SCHEMA_BLOB
    jsonschema.Draft4Validator.check_schema(marathon.load_schema())


def test_shipped_definition_validates() -> None:
    marathon.validate_app(marathon.load_app())


def test_shipped_definition_has_the_required_shape() -> None:
    app = marathon.load_app()
    assert app["container"]["type"] == "DOCKER"
    assert app["container"]["docker"]["image"] == "consul-lb/haproxy:latest"
    assert "privileged" not in app["container"]["docker"]
    assert app["networks"] == [{"mode": "host"}]
    ports = [p["port"] for p in app["portDefinitions"]]
    assert ports == [8080, 4444]
    assert app["requirePorts"] is True
    (check,) = app["healthChecks"]
    assert check["protocol"] == "MESOS_HTTP"
    assert check["path"] == "/_haproxy_health_check"
    assert ports[check["portIndex"]] == 4444
    assert ["hostname", "UNIQUE"] in app["constraints"]
    assert app["upgradeStrategy"]["minimumHealthCapacity"] == 1
    assert {"HAPROXY_DOM", "CONSUL_HTTP_ADDR", "HAPROXY_RELOAD_STRATEGY"} <= set(app["env"])
    assert app["taskKillGracePeriodSeconds"] > int(app["env"]["HAPROXY_DRAIN_SECONDS"])


@pytest.mark.parametrize("strategy", marathon.STRATEGIES)
def test_rendered_definition_validates_for_each_strategy(strategy: str) -> None:
    app = rendered(strategy)
    marathon.validate_app(app)
    jsonschema.Draft4Validator(marathon.load_schema()).validate(app)
    assert app["id"] == marathon.DEFAULT_APP_ID
    assert app["instances"] == 3
    assert app["container"]["docker"]["image"] == "acme/haproxy:1.2.3"
    assert app["env"]["HAPROXY_RELOAD_STRATEGY"] == strategy
    has_net_admin = marathon.NET_ADMIN in app["container"]["docker"]["parameters"]
    assert has_net_admin == (strategy == "syn-drop")


def test_render_drops_net_admin_from_base_for_seamless(tmp_path: Path) -> None:
    base = marathon.load_app()
    base["container"]["docker"]["parameters"] = [dict(marathon.NET_ADMIN)]
    path = tmp_path / "app.json"
    path.write_text(json.dumps(base))
    assert rendered("seamless", base=path)["container"]["docker"]["parameters"] == []
    assert rendered("syn-drop", base=path)["container"]["docker"]["parameters"] == [
        marathon.NET_ADMIN
    ]


def test_render_overrides_domain_and_consul() -> None:
    app = rendered(domain="lb.example.org", consul_addr="10.0.0.5:8500")
    assert app["env"]["HAPROXY_DOM"] == "lb.example.org"
    assert app["env"]["CONSUL_HTTP_ADDR"] == "10.0.0.5:8500"
    marathon.validate_app(app)


def test_render_does_not_touch_the_shipped_file() -> None:
    before = marathon.SHIPPED_APP.read_bytes()
    rendered("syn-drop", domain="x.example")
    assert marathon.SHIPPED_APP.read_bytes() == before


def test_render_rejects_unknown_strategy() -> None:
    with pytest.raises(ValueError, match=r"unknown reload strategy 'syn_drop'.*seamless, syn-drop"):
        rendered("syn_drop")


def test_wrong_container_type_names_the_field() -> None:
    app = rendered()
    app["container"]["type"] = "DOKER"
    assert errors_of(app) == ["container.type: 'DOKER' is not one of ['MESOS', 'DOCKER']"]


def test_wrong_value_type_names_the_field() -> None:
    app = rendered()
    app["instances"] = "2"
    app["healthChecks"][0]["portIndex"] = -1
    assert errors_of(app) == [
        "healthChecks[0].portIndex: -1 is less than the minimum of 0",
        "instances: '2' is not of type 'integer'",
    ]


def test_missing_id_is_rejected() -> None:
    app = rendered()
    del app["id"]
    assert errors_of(app) == ["id: required"]


def test_unknown_property_is_named() -> None:
    app = rendered()
    app["upgradeStrategy"]["maxSurge"] = 1
    assert errors_of(app) == ["upgradeStrategy.maxSurge: unknown property"]


def test_privileged_is_rejected_even_though_the_schema_allows_it() -> None:
    app = rendered()
    app["container"]["docker"]["privileged"] = True
    jsonschema.Draft4Validator(marathon.load_schema()).validate(app)  # Marathon would take it
    assert errors_of(app) == [
        "container.docker.privileged: must not be true (never run privileged)"
    ]


def test_privileged_as_docker_parameter_is_rejected() -> None:
    app = rendered()
    app["container"]["docker"]["parameters"].append({"key": "privileged", "value": "true"})
    (error,) = errors_of(app)
    assert error.startswith("container.docker.parameters[0]: 'privileged' is not allowed")


def test_net_admin_must_match_the_strategy() -> None:
    syn_drop = rendered("syn-drop")
    syn_drop["container"]["docker"]["parameters"] = []
    assert errors_of(syn_drop)[0].startswith("container.docker.parameters: syn-drop needs")
    seamless = rendered("seamless")
    seamless["container"]["docker"]["parameters"] = [dict(marathon.NET_ADMIN)]
    assert "only for syn-drop" in errors_of(seamless)[0]


def test_project_env_rules() -> None:
    app = rendered()
    del app["env"]["HAPROXY_DOM"]
    app["env"]["HAPROXY_RELOAD_STRATEGY"] = "graceful"
    errors = errors_of(app)
    assert errors[0].startswith("env.HAPROXY_DOM: required")
    assert errors[1] == (
        "env.HAPROXY_RELOAD_STRATEGY: 'graceful' is not one of ['seamless', 'syn-drop']"
    )


def test_kill_grace_period_must_exceed_the_drain_time() -> None:
    app = rendered()
    app["taskKillGracePeriodSeconds"] = 5
    (error,) = errors_of(app)
    assert error.startswith("taskKillGracePeriodSeconds: must be greater than the drain time (5s")
    app["env"]["HAPROXY_DRAIN_SECONDS"] = "4.5"
    marathon.validate_app(app)
    del app["taskKillGracePeriodSeconds"], app["env"]["HAPROXY_DRAIN_SECONDS"]
    (error,) = errors_of(app)  # unset: Mesos' short default would cut the drain off
    assert error.startswith("taskKillGracePeriodSeconds: must be greater than the drain time (5s")
    app["taskKillGracePeriodSeconds"] = 30
    app["env"]["HAPROXY_DRAIN_SECONDS"] = "soon"
    assert errors_of(app) == ["env.HAPROXY_DRAIN_SECONDS: 'soon' is not a number of seconds"]


def test_all_errors_are_reported_sorted() -> None:
    app = copy.deepcopy(rendered())
    del app["id"]
    app["container"]["type"] = "DOKER"
    app["container"]["docker"]["privileged"] = True
    app["cmd"] = "haproxy"
    app["args"] = ["-f", "x"]
    errors = errors_of(app)
    assert errors == sorted(errors)
    assert [e.split(":")[0] for e in errors] == [
        "(root)",
        "container.docker.privileged",
        "container.type",
        "id",
    ]
    assert errors[0].startswith('(root): must not match {"allOf"')
    assert "id: required" in str(marathon.AppDefinitionError(errors))
