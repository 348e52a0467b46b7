"""`imgpipe topics list` and the parsing of `imgpipe topics apply`."""

from __future__ import annotations

import json

import pytest

from imgpipe.cli import build_parser, main
from imgpipe.contracts import commands
from imgpipe.contracts.registry import default_registry

pytestmark = pytest.mark.unit


def test_topics_list_prints_every_registered_topic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "list", "--json"]) == 0

    listed = json.loads(capsys.readouterr().out)
    assert [topic["name"] for topic in listed] == [spec.name for spec in default_registry()]


def test_topics_list_table_has_one_row_per_topic(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topics", "list"]) == 0

    assert len(capsys.readouterr().out.splitlines()) == 1 + len(default_registry())


def test_topics_apply_options() -> None:
    args = build_parser().parse_args(
        ["topics", "apply", "--bootstrap-servers", "kafka:9092", "--replication-factor", "3", "--dry-run"]
    )

    assert args.handler is commands.apply_command
    assert (args.bootstrap_servers, args.replication_factor, args.dry_run) == ("kafka:9092", 3, True)


def test_topics_apply_refuses_a_zero_replication_factor() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["topics", "apply", "--replication-factor", "0"])
