import json
import logging
from collections.abc import Iterator

import pytest

from imgpipe.runtime.logs import configure_logging, log_context

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def root_logger_restored() -> Iterator[None]:
    """configure_logging replaces the root handlers; later tests must not log into this test's
    captured (then closed) stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_task_and_trace_ids(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("detect", "INFO", "json")
    with log_context(task_id="task-1", trace_id="0af7651916cd43dd8448eb211c80319c"):
        logging.getLogger("imgpipe.test").info("stage done")
    logging.getLogger("imgpipe.test").info("outside")

    inside, outside = (json.loads(line) for line in capsys.readouterr().err.strip().splitlines())
    assert inside["message"] == "stage done"
    assert inside["service"] == "detect"
    assert inside["task_id"] == "task-1"
    assert inside["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert inside["level"] == "INFO"
    assert outside["task_id"] is None
