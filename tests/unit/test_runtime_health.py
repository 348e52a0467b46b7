import httpx
import pytest

from imgpipe.runtime.health import Health

pytestmark = pytest.mark.unit


@pytest.fixture
def served() -> tuple[Health, str]:
    health = Health(liveness_stale_seconds=60)
    port = health.serve("127.0.0.1", 0)
    yield health, f"http://127.0.0.1:{port}"
    health.close()


def test_readiness_reflects_every_check(served: tuple[Health, str]) -> None:
    health, url = served
    state = {"joined": False}
    health.add_readiness_check("kafka_group_joined", lambda: state["joined"])
    health.add_readiness_check("broken", lambda: 1 / 0 == 0)

    not_ready = httpx.get(f"{url}/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"checks": {"kafka_group_joined": False, "broken": False}}

    state["joined"] = True
    health.add_readiness_check("broken", lambda: True)
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_liveness_fails_when_the_loop_stops_beating() -> None:
    health = Health(liveness_stale_seconds=0.000_001)
    port = health.serve("127.0.0.1", 0)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 503
    finally:
        health.close()


def test_metrics_and_liveness_are_served(served: tuple[Health, str]) -> None:
    health, url = served
    health.beat()
    assert httpx.get(f"{url}/healthz").status_code == 200
    metrics = httpx.get(f"{url}/metrics")
    assert metrics.status_code == 200
    assert "python_info" in metrics.text
    assert httpx.get(f"{url}/nope").status_code == 404
