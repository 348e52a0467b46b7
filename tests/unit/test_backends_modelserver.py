"""The model server's app in process (FastAPI TestClient): protocol shapes, errors, the matte hint.

Its contract with the HTTP backends, over a real socket, is tests/integration/test_model_backends.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgpipe.backends.rembg_matte import hint_extras
from imgpipe.imaging.detect import Box, Detection
from imgpipe.imaging.errors import ModelError
from imgpipe.modelserver.app import create_app
from imgpipe.modelserver.simulated import Simulation

pytestmark = pytest.mark.unit

IMAGE_SIZE = (64, 48)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class FakeDetector:
    def detect(self, image: Image.Image) -> list[Detection]:
        return [Detection(Box(1, 2, 30, 20), 12.0, "cat_face", 3), Detection(Box(5, 5, 5, 5), 1.5)]


class FakeStylizer:
    def stylize(self, image: Image.Image, prompt: str) -> Image.Image:
        return Image.new("RGB", image.size, (len(prompt), 0, 0))


class FakeMatter:
    def __init__(self) -> None:
        self.hints: list[Box | None] = []
        self.failure: ModelError | None = None

    def matte(self, image: Image.Image, *, hint: Box | None = None) -> Image.Image:
        self.hints.append(hint)
        if self.failure:
            raise self.failure
        result = image.convert("RGB")
        result.putalpha(128)
        return result


@pytest.fixture
def matter() -> FakeMatter:
    return FakeMatter()


@pytest.fixture
def client(matter: FakeMatter) -> Iterator[TestClient]:
    app = create_app(
        detector=FakeDetector(), stylizer=FakeStylizer(), matter=matter, detect_model="pets", api_key="k"
    )
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def png() -> bytes:
    return _png(Image.new("RGB", IMAGE_SIZE, (40, 80, 120)))


def _infer_body(data: str) -> dict[str, Any]:
    return {"id": "req-1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}]}


# --- OIP v2 -------------------------------------------------------------------------------------------


def test_health_and_model_readiness(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/models/pets/ready").json() == {"name": "pets", "ready": True}
    assert client.get("/v2/models/pets").json()["inputs"][0]["datatype"] == "BYTES"
    missing = client.get("/v2/models/other/ready")
    assert missing.status_code == 404
    assert "unknown model" in missing.json()["error"]


def test_infer_answers_oip_tensors(client: TestClient, png: bytes) -> None:
    response = client.post("/v2/models/pets/infer", json=_infer_body(base64.b64encode(png).decode()))
    assert response.status_code == 200
    body = response.json()
    assert (body["model_name"], body["id"]) == ("pets", "req-1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["boxes"] == {
        "name": "boxes",
        "datatype": "FP32",
        "shape": [2, 4],
        "data": [1, 2, 30, 20, 5, 5, 5, 5],
    }
    assert outputs["scores"]["data"] == [12.0, 1.5]
    assert outputs["support"] == {"name": "support", "datatype": "INT32", "shape": [2], "data": [3, 1]}
    assert outputs["labels"]["data"] == ["cat_face", "cat_face"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not JSON"),
        (b'{"inputs": []}', 400, "no 'inputs'"),
        (b'{"inputs": [{"name": "image", "datatype": "FP32", "data": [1]}]}', 400, "must be BYTES"),
        (b'{"inputs": [{"name": "image", "datatype": "BYTES", "data": ["a", "b"]}]}', 400, "exactly one"),
        (b'{"inputs": [{"name": "image", "datatype": "BYTES", "data": ["%%%"]}]}', 400, "not valid base64"),
        (
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "data": ["Z2FyYmFnZQ=="]}]}',
            400,
            "invalid_image",
        ),
        (
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "data": ["R0lGODlhAQABAAAAADs="]}]}',
            415,
            "GIF",
        ),
    ],
)
def test_infer_refuses_bad_requests_in_oip_error_shape(
    client: TestClient, body: bytes, status: int, message: str
) -> None:
    response = client.post(
        "/v2/models/pets/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert message in response.json()["error"]


def test_infer_on_an_unknown_model_is_404(client: TestClient, png: bytes) -> None:
    response = client.post("/v2/models/other/infer", json=_infer_body(base64.b64encode(png).decode()))
    assert response.status_code == 404


# --- OpenAI images --------------------------------------------------------------------------------------


def _edit(client: TestClient, png: bytes, key: str | None = "k", **fields: str) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = {"prompt": "sepia", "model": "any", **fields}
    return client.post(
        "/v1/images/edits", data=data, files={"image": ("a.png", png, "image/png")}, headers=headers
    )


def test_edits_answers_b64_json(client: TestClient, png: bytes) -> None:
    response = _edit(client, png, response_format="b64_json", n="1")
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body["created"], int)
    (item,) = body["data"]
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert (image.format, image.size, image.getpixel((0, 0))) == ("PNG", IMAGE_SIZE, (5, 0, 0))


def test_edits_honours_size(client: TestClient, png: bytes) -> None:
    body = _edit(client, png, size="128x96").json()
    assert Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).size == (128, 96)


@pytest.mark.parametrize(
    ("key", "fields", "status", "message"),
    [
        (None, {}, 401, "API key"),
        ("wrong", {}, 401, "API key"),
        ("k", {"n": "2"}, 400, "n=2"),
        ("k", {"response_format": "url"}, 400, "response_format"),
        ("k", {"size": "big"}, 400, "size"),
        ("k", {"prompt": "  "}, 400, "prompt"),
    ],
)
def test_edits_refuses_in_openai_error_shape(
    client: TestClient, png: bytes, key: str | None, fields: dict[str, str], status: int, message: str
) -> None:
    response = _edit(client, png, key=key, **fields)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_edits_without_an_image_is_400(client: TestClient) -> None:
    response = client.post("/v1/images/edits", data={"prompt": "x"}, headers={"Authorization": "Bearer k"})
    assert response.status_code == 400
    assert "image" in response.json()["error"]["message"]


# --- rembg ----------------------------------------------------------------------------------------------


def test_remove_answers_rgba_png_and_passes_the_hint(
    client: TestClient, png: bytes, matter: FakeMatter
) -> None:
    hint = Box(3, 4, 20, 10)
    response = client.post(
        "/api/remove",
        data={"model": "u2net"},
        files={"file": ("a.png", png, "image/png")},
        params={"extras": hint_extras(hint)},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert (image.mode, image.size) == ("RGBA", IMAGE_SIZE)
    assert matter.hints == [hint]


def test_remove_only_mask_and_ignored_extras(client: TestClient, png: bytes, matter: FakeMatter) -> None:
    response = client.post(
        "/api/remove", data={"om": "true"}, files={"file": ("a.png", png)}, params={"extras": "{bad"}
    )
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).mode == "L"
    assert matter.hints == [None]


@pytest.mark.parametrize(("retryable", "status"), [(True, 503), (False, 422)])
def test_remove_maps_backend_failures_to_status(
    client: TestClient, png: bytes, matter: FakeMatter, retryable: bool, status: int
) -> None:
    matter.failure = ModelError("GrabCut failed", retryable=retryable)
    response = client.post("/api/remove", files={"file": ("a.png", png)})
    assert response.status_code == status
    assert "GrabCut failed" in response.json()["detail"]


def test_remove_refuses_undecodable_files(client: TestClient) -> None:
    response = client.post("/api/remove", files={"file": ("a.png", b"not an image")})
    assert response.status_code == 400
    assert "invalid_image" in response.json()["detail"]
    assert client.post("/api/remove", data={"model": "u2net"}).status_code == 422


# --- the simulated accelerator ---------------------------------------------------------------------------


@pytest.fixture
def simulated() -> Iterator[TestClient]:
    with TestClient(create_app(detect_model="pets", simulation=Simulation(service_time=0))) as test_client:
        yield test_client


def test_simulation_answers_every_protocol_with_a_valid_image(simulated: TestClient, png: bytes) -> None:
    infer = simulated.post("/v2/models/pets/infer", json=_infer_body(base64.b64encode(png).decode()))
    assert infer.status_code == 200
    outputs = {o["name"]: o for o in infer.json()["outputs"]}
    assert outputs["boxes"]["shape"] == [1, 4]
    assert outputs["boxes"]["data"] == [16, 12, 32, 24]  # the middle of the 64x48 image
    assert outputs["support"]["data"][0] >= 2 and outputs["scores"]["data"][0] >= 10  # a pet by policy
    edits = simulated.post("/v1/images/edits", data={"prompt": "noir"}, files={"image": ("a.png", png)})
    assert edits.status_code == 200
    assert base64.b64decode(edits.json()["data"][0]["b64_json"]) == png
    for om, mode in (("false", "RGBA"), ("true", "L")):
        remove = simulated.post("/api/remove", data={"om": om}, files={"file": ("a.png", png)})
        assert remove.status_code == 200
        image = Image.open(io.BytesIO(remove.content))
        assert (image.mode, image.size) == (mode, IMAGE_SIZE)


def test_simulation_refuses_what_is_no_image(simulated: TestClient) -> None:
    garbage = base64.b64encode(b"not an image").decode()
    assert simulated.post("/v2/models/pets/infer", json=_infer_body(garbage)).status_code == 400
    edits = simulated.post("/v1/images/edits", data={"prompt": "x"}, files={"image": ("a.png", b"no")})
    assert edits.status_code == 400
    assert simulated.post("/api/remove", files={"file": ("a.png", b"no")}).status_code == 400
    assert simulated.post("/v2/models/other/infer", json=_infer_body(garbage)).status_code == 404


def test_simulation_serves_at_most_its_slots_per_model_and_queues_the_rest() -> None:
    async def scenario() -> None:
        simulation = Simulation(service_time=3600, slots=4)
        calls = [asyncio.create_task(simulation.serve("detect")) for _ in range(6)]
        other = asyncio.create_task(simulation.serve("matte"))

        settled = _until(lambda: simulation.load("detect") == (4, 2) and simulation.load("matte") == (1, 0))
        await asyncio.wait_for(settled, timeout=10)
        calls[0].cancel()  # one call leaves: the first queued one takes its slot
        await asyncio.wait_for(_until(lambda: simulation.load("detect") == (4, 1)), timeout=10)
        for call in [*calls, other]:
            call.cancel()
        await asyncio.gather(*calls, other, return_exceptions=True)
        assert simulation.load("detect") == (0, 0)

    asyncio.run(scenario())


async def _until(condition: Callable[[], bool]) -> None:
    """Turns of the event loop until `condition` holds (the caller's wait_for bounds it): the
    simulation's state changes only when its tasks run."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0)
