"""Pure parts of the HTTP model backends: response parsing, result checks, config, headers."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from PIL import Image

from imgpipe.backends.images import decode_b64, decode_image
from imgpipe.backends.oip_detect import infer_request, parse_infer_response
from imgpipe.backends.openai_generate import OpenAIImagesStylizer, fit_to_input, parse_images_response
from imgpipe.backends.rembg_matte import hint_extras, hint_from_extras
from imgpipe.backends.resilience import HttpBackendConfig, parse_retry_after
from imgpipe.imaging.detect import Box, Detection
from imgpipe.imaging.errors import ErrorCode, ModelError

pytestmark = pytest.mark.unit

WHAT = "test"


def _oip(*outputs: dict[str, Any]) -> dict[str, Any]:
    return {"model_name": "m", "outputs": list(outputs)}


def _boxes(data: list[Any], shape: list[int] | None = None, datatype: str = "FP32") -> dict[str, Any]:
    return {"name": "boxes", "datatype": datatype, "shape": shape or [len(data) // 4, 4], "data": data}


def _scores(data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": "scores", "datatype": "FP32", "shape": shape or [len(data)], "data": data}


def _permanent(exc_info: pytest.ExceptionInfo[ModelError]) -> ModelError:
    assert exc_info.value.code == ErrorCode.MODEL_ERROR
    assert exc_info.value.retryable is False, exc_info.value.message
    return exc_info.value


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- OIP v2 -------------------------------------------------------------------------------------------


def test_infer_request_carries_one_base64_png() -> None:
    image = Image.new("RGB", (7, 5), (10, 20, 30))
    (tensor,) = infer_request(image)["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("image", "BYTES", [1])
    decoded = Image.open(io.BytesIO(base64.b64decode(tensor["data"][0], validate=True)))
    assert decoded.format == "PNG"
    assert decoded.size == (7, 5)
    assert decoded.getpixel((0, 0)) == (10, 20, 30)


def test_infer_response_becomes_detections_best_first() -> None:
    payload = _oip(
        _boxes([10.4, 20.6, 30, 40, 1, 2, 3, 4]),
        _scores([3.0, 17.5]),
        {"name": "support", "datatype": "INT32", "shape": [2], "data": [1, 4]},
        {"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["cat_face", "dog_face"]},
    )
    assert parse_infer_response(payload, (100, 100), what=WHAT) == [
        Detection(Box(1, 2, 3, 4), 17.5, "dog_face", 4),
        Detection(Box(10, 21, 30, 40), 3.0, "cat_face", 1),
    ]


def test_infer_response_accepts_nested_data_batch_dimension_and_defaults() -> None:
    payload = _oip(
        _boxes([[[1, 2, 3, 4]]], shape=[1, 1, 4]),
        _scores([[0.5]], shape=[1, 1]),
    )
    assert parse_infer_response(payload, (100, 100), what=WHAT) == [
        Detection(Box(1, 2, 3, 4), 0.5, label="cat_face", support=1)
    ]


def test_infer_response_clips_boxes_and_drops_empty_ones() -> None:
    payload = _oip(_boxes([-10, 90, 30, 30, 200, 200, 10, 10]), _scores([5.0, 9.0]))
    assert parse_infer_response(payload, (100, 100), what=WHAT) == [Detection(Box(0, 90, 20, 10), 5.0)]


def test_infer_response_with_no_detections() -> None:
    payload = _oip(_boxes([], shape=[0, 4]), _scores([], shape=[0]))
    assert parse_infer_response(payload, (10, 10), what=WHAT) == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"error": "x"}, "no 'outputs'"),
        ("not an object", "no 'outputs'"),
        (_oip(_scores([1.0])), "lacks 'boxes'"),
        (_oip(_boxes([1, 2, 3, 4])), "lacks 'boxes' or 'scores'"),
        (_oip(_boxes([1, 2, 3, 4]), _boxes([1, 2, 3, 4]), _scores([1.0])), "appears twice"),
        (_oip(_boxes([1, 2, 3, 4], shape=[2, 4]), _scores([1.0])), "4 values for shape [2, 4]"),
        (_oip(_boxes([1, 2, 3, 4, 5, 6], shape=[2, 3]), _scores([1.0, 2.0])), "expected [N, 4]"),
        (_oip(_boxes([1, 2, 3, 4]), _scores([1.0, 2.0])), "'scores' has shape [2], expected [1]"),
        (_oip(_boxes([1, 2, 3, 4], datatype="BYTES"), _scores([1.0])), "datatype 'BYTES'"),
        (_oip(_boxes([1, 2, 3, float("nan")]), _scores([1.0])), "finite number"),
        (_oip(_boxes([1, 2, "3", 4]), _scores([1.0])), "finite number"),
        (_oip(_boxes([1, 2, 3, 4]), _scores([True])), "finite number"),
        (_oip(_boxes([1, 2, -3, 4]), _scores([1.0])), "negative size"),
        (
            _oip(
                _boxes([1, 2, 3, 4]),
                _scores([1.0]),
                {"name": "support", "datatype": "INT32", "shape": [1], "data": [1.5]},
            ),
            "non-negative integer",
        ),
        (
            _oip(_boxes([1, 2, 3, 4]), {"name": "scores", "datatype": "FP32", "shape": "x", "data": []}),
            "shape",
        ),
    ],
)
def test_malformed_infer_responses_are_permanent_model_errors(payload: object, message: str) -> None:
    with pytest.raises(ModelError) as exc_info:
        parse_infer_response(payload, (100, 100), what=WHAT)
    assert message in _permanent(exc_info).message


# --- OpenAI images ------------------------------------------------------------------------------------


def test_images_response_yields_the_first_image() -> None:
    payload = {
        "created": 1,
        "data": [{"b64_json": base64.b64encode(b"first").decode()}, {"b64_json": "eA=="}],
    }
    assert parse_images_response(payload, what=WHAT) == b"first"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"created": 1, "data": []}, "no 'data'"),
        ({"error": {"message": "x"}}, "no 'data'"),
        ({"data": ["x"]}, "not an object"),
        ({"data": [{"url": "https://example.com/a.png"}]}, "returned a URL"),
        ({"data": [{"b64_json": "not base64!"}]}, "invalid base64"),
        ({"data": [{"b64_json": 42}]}, "expected a base64 string"),
    ],
)
def test_malformed_images_responses_are_permanent(payload: object, message: str) -> None:
    with pytest.raises(ModelError) as exc_info:
        parse_images_response(payload, what=WHAT)
    assert message in _permanent(exc_info).message


def test_fit_to_input_scales_a_same_aspect_result_back_to_the_input_size() -> None:
    source = Image.new("RGB", (300, 200))
    fitted = fit_to_input(Image.new("RGB", (1536, 1024), (200, 100, 50)), source, what=WHAT)
    assert (fitted.size, fitted.mode) == ((300, 200), "RGB")
    assert fitted.getpixel((150, 100)) == (200, 100, 50)


def test_fit_to_input_refuses_another_aspect_ratio() -> None:
    with pytest.raises(ModelError) as exc_info:
        fit_to_input(Image.new("RGB", (1024, 1024)), Image.new("RGB", (300, 200)), what=WHAT)
    assert "aspect ratio" in _permanent(exc_info).message


@pytest.mark.parametrize("mode", ["L", "LA", "1", "CMYK", "I"])
def test_fit_to_input_refuses_non_colour_modes(mode: str) -> None:
    with pytest.raises(ModelError) as exc_info:
        fit_to_input(Image.new(mode, (4, 4)), Image.new("RGB", (4, 4)), what=WHAT)
    assert "mode" in _permanent(exc_info).message


def test_fit_to_input_keeps_the_alpha_convention_of_the_input() -> None:
    source_alpha = Image.new("L", (4, 4), 0)
    source_alpha.putpixel((1, 1), 255)
    source = Image.new("RGB", (4, 4))
    source.putalpha(source_alpha)
    result = fit_to_input(Image.new("RGB", (4, 4), (9, 9, 9)), source, what=WHAT)
    assert result.mode == "RGBA"
    assert result.getchannel("A").tobytes() == source_alpha.tobytes()

    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # hidden black under full transparency
    flattened = fit_to_input(transparent, Image.new("RGB", (4, 4)), what=WHAT)
    assert flattened.mode == "RGB"
    assert flattened.getpixel((0, 0)) == (255, 255, 255)


def test_fit_to_input_expands_palette_results() -> None:
    palette = Image.new("RGB", (4, 4), (255, 0, 0)).convert("P")
    assert fit_to_input(palette, Image.new("RGB", (4, 4)), what=WHAT).getpixel((0, 0)) == (255, 0, 0)


def test_response_format_is_not_sent_to_gpt_image_models() -> None:
    def stylizer(model: str, **kwargs: Any) -> OpenAIImagesStylizer:
        return OpenAIImagesStylizer(HttpBackendConfig(base_url="http://127.0.0.1:1", model=model), **kwargs)

    assert stylizer("stylizer").send_response_format is True
    assert stylizer("dall-e-2").send_response_format is True
    assert stylizer("gpt-image-1").send_response_format is False
    assert stylizer("gpt-image-1", send_response_format=True).send_response_format is True


# --- images -------------------------------------------------------------------------------------------


def test_decode_image_turns_bad_bytes_into_permanent_model_errors() -> None:
    assert decode_image(_png(Image.new("RGBA", (3, 2))), what=WHAT).size == (3, 2)
    for data in (b"", b"garbage", _png(Image.new("RGB", (3, 2)))[:40]):
        with pytest.raises(ModelError) as exc_info:
            decode_image(data, what=WHAT)
        assert "not a usable image" in _permanent(exc_info).message


def test_decode_b64_is_strict() -> None:
    assert decode_b64("aGk=", what=WHAT) == b"hi"
    with pytest.raises(ModelError) as exc_info:
        decode_b64("aGk=\n<html>", what=WHAT)
    _permanent(exc_info)


# --- rembg hint -----------------------------------------------------------------------------------------


def test_hint_travels_as_a_sam_rectangle_prompt() -> None:
    hint = Box(10, 20, 30, 40)
    extras = hint_extras(hint)
    assert json.loads(extras) == {"sam_prompt": [{"type": "rectangle", "data": [10, 20, 40, 60]}]}
    assert hint_from_extras(extras) == hint
    assert hint_from_extras(None) is None
    assert hint_from_extras('{"sam_prompt": [{"type": "point", "data": [1, 2], "label": 1}]}') is None
    assert hint_from_extras('{"other": 1}') is None
    for bad in ("[1]", '{"sam_prompt": [{"type": "rectangle", "data": [1, 2]}]}', "{not json"):
        with pytest.raises(ValueError):
            hint_from_extras(bad)


# --- config ---------------------------------------------------------------------------------------------


def test_config_validates_and_hides_the_api_key() -> None:
    config = HttpBackendConfig(base_url="https://models.example", model="m", api_key="sk-secret")
    assert "sk-secret" not in repr(config)
    with pytest.raises(ValueError, match="base_url"):
        HttpBackendConfig(base_url="models.example", model="m")
    with pytest.raises(ValueError, match="model"):
        HttpBackendConfig(base_url="http://h", model="")
    bad: tuple[tuple[str, Any], ...] = (
        ("timeout_seconds", 0),
        ("connect_timeout_seconds", -1),
        ("max_concurrency", 0),
        ("breaker_fail_max", 0),
        ("breaker_reset_seconds", 0),
        ("max_retries", -1),
        ("backoff_seconds", -0.1),
        ("acquire_timeout_seconds", -1),
    )
    for field, value in bad:
        settings: dict[str, Any] = {field: value}
        with pytest.raises(ValueError, match=field):
            HttpBackendConfig(base_url="http://h", model="m", **settings)


# --- Retry-After ----------------------------------------------------------------------------------------


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("5", now=now) == 5.0
    assert parse_retry_after(" 0.25 ", now=now) == 0.25
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0
    for value in (None, "", "soon", "-3", "nan", "inf"):
        assert parse_retry_after(value, now=now) is None
