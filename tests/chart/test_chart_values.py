"""Wrong values are refused with a message that names them: by values.schema.json (helm validates it
on lint, template, install and upgrade) or, for rules across merged values, by the templates."""

from __future__ import annotations

import pytest
from chartkit import MINIMAL, helm, template_args

pytestmark = pytest.mark.chart

# (what is wrong, --set / --set-json arguments, a fragment of helm's error)
SCHEMA_CASES = [
    (
        "unknown top-level key",
        ["--set", "replicaCount=3"],
        "additional properties 'replicaCount' not allowed",
    ),
    (
        "typo in a component",
        ["--set", "components.detect.replica=2"],
        "additional properties 'replica' not allowed",
    ),
    (
        "unknown autoscaling mode",
        ["--set", "components.detect.autoscaling.mode=vpa"],
        "/components/detect/autoscaling/mode",
    ),
    ("negative replicas", ["--set", "components.matte.replicas=-1"], "/components/matte/replicas"),
    (
        "port out of range",
        ["--set", "components.ingest-api.port.containerPort=70000"],
        "/components/ingest-api/port/containerPort",
    ),
    (
        "setting spelled with its prefix",
        ["--set", "settings.IMGPIPE_LOG_LEVEL=DEBUG"],
        "invalid propertyName 'IMGPIPE_LOG_LEVEL'",
    ),
    ("setting in lower case", ["--set", "settings.log_level=DEBUG"], "invalid propertyName 'log_level'"),
    (
        "unknown dependency",
        ["--set-json", 'components.detect.uses=["kafka","redis"]'],
        "/components/detect/uses/1",
    ),
    ("malformed digest", ["--set", "image.digest=sha256:abc"], "/image/digest"),
    ("unknown pull policy", ["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (
        "relative probe path",
        ["--set", "components.detect.probes.readiness=readyz"],
        "/components/detect/probes/readiness",
    ),
    (
        "topic name instead of registry key",
        ["--set-json", 'components.detect.kafka.lagTopics=["tasks.detect"]'],
        "lagTopics/0",
    ),
    ("KEDA threshold of zero", ["--set", "components.detect.autoscaling.lagThreshold=0"], "lagThreshold"),
    (
        "bad component name",
        ["--set-json", 'components={"Detect":{"args":["detect"]}}'],
        "invalid propertyName 'Detect'",
    ),
    (
        "ingress host without paths",
        ["--set-json", 'components.ingest-api.ingress.hosts=[{"host":"a.example.com"}]'],
        "paths",
    ),
    (
        "secret setting spelled with its prefix",
        [
            "--set-json",
            'components.generate.secretEnv=[{"setting":"IMGPIPE_GENERATE_API_KEY","name":"k","key":"k"}]',
        ],
        "secretEnv/0/setting",
    ),
    (
        "unknown NetworkPolicy key",
        ["--set", "networkPolicy.ingressFrom=x"],
        "additional properties 'ingressFrom' not allowed",
    ),
    (
        "monitor interval without unit",
        ["--set", "monitoring.podMonitor.interval=30"],
        "/monitoring/podMonitor/interval",
    ),
]

TEMPLATE_CASES = [
    ("no Kafka", ["--set", "kafka.bootstrapServers="], "kafka.bootstrapServers is required"),
    ("no database Secret", ["--set", "database.urlSecret.name="], "database.urlSecret.name"),
    (
        "registry key that does not exist",
        ["--set-json", 'components.detect.kafka.lagTopics=["tasks-paint"]'],
        '"tasks-paint" is not a topic registry key',
    ),
    (
        "KEDA without a group",
        ["--set", "components.detect.kafka.group="],
        "autoscaling.mode keda needs kafka.group",
    ),
    (
        "HPA scaling to zero",
        ["--set", "components.ingest-api.autoscaling.minReplicas=0"],
        "an HPA cannot scale to zero",
    ),
    (
        "HPA without a maximum",
        ["--set", "components.ingest-api.autoscaling.maxReplicas=null"],
        "maxReplicas is required with mode hpa",
    ),
    (
        "minimum above maximum",
        ["--set", "components.detect.autoscaling.minReplicas=9,components.detect.autoscaling.maxReplicas=2"],
        "minReplicas 9 is above maxReplicas 2",
    ),
    (
        "component without a command",
        ["--set-json", 'components.extra={"kafka":{"group":"g","lagTopics":["tasks-detect"]}}'],
        "components.extra.args",
    ),
    (
        "callback without signing keys",
        ["--set", "webhooks.signingKeysSecret.name="],
        "components.callback needs webhooks.signingKeysSecret.name",
    ),
    (
        "existing ServiceAccount without a name",
        ["--set", "serviceAccount.create=false"],
        "serviceAccount.name",
    ),
]


def refused(arguments: list[str]) -> str:
    result = helm(*template_args([MINIMAL]), *arguments, check=False)
    assert result.returncode != 0, f"helm accepted {arguments}"
    return result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"), [case[1:] for case in SCHEMA_CASES], ids=[case[0] for case in SCHEMA_CASES]
)
def test_the_values_schema_refuses(arguments: list[str], message: str) -> None:
    error = refused(arguments)
    assert "values don't meet the specifications of the schema" in error
    assert message in error


@pytest.mark.parametrize(
    ("arguments", "message"), [case[1:] for case in TEMPLATE_CASES], ids=[case[0] for case in TEMPLATE_CASES]
)
def test_the_templates_refuse(arguments: list[str], message: str) -> None:
    assert message in refused(arguments)


def test_lint_also_applies_the_schema() -> None:
    result = helm(
        "lint",
        "--strict",
        *template_args([MINIMAL])[2:3],
        "-f",
        str(MINIMAL),
        "--set",
        "replicaCount=3",
        check=False,
    )
    assert (
        result.returncode != 0
        and "additional properties 'replicaCount' not allowed" in result.stdout + result.stderr
    )
