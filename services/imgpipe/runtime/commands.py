"""`imgpipe deadletters list|show|replay`: what the dead-letter topic holds, and putting it back.

Kafka client settings come from IMGPIPE_KAFKA_BOOTSTRAP_SERVERS and IMGPIPE_KAFKA_CLIENT_CONFIG, as for
every service. See runtime/deadletters.py for what is read and what a replay sends.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from imgpipe.runtime.settings import RuntimeSettings, load_settings

if TYPE_CHECKING:
    from imgpipe.runtime.deadletters import DeadLetter, DeadLetters, Selection

_REASON_WIDTH = 70
_LIMIT = 100
_PREVIEW_BYTES = 512


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `deadletters` with its `list`, `show` and `replay` subcommands."""
    deadletters = subparsers.add_parser(
        "deadletters",
        help="list, show and replay the pipeline's dead letters",
        description="Read the dead-letter topic (from its start to its current end, joining no group) "
        "and replay dead letters to the topic they came from.",
    )
    actions = deadletters.add_subparsers(dest="deadletters_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="dead letters with their reason, origin and age (oldest first)")
    _selection_arguments(listing)
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    listing.set_defaults(handler=list_command)

    show = actions.add_parser("show", help="one dead letter with its headers and payload")
    show.add_argument("id", help="<topic>:<partition>:<offset>, as `list` prints it")
    show.add_argument("--json", action="store_true", help="JSON, the payload in base64")
    show.set_defaults(handler=show_command)

    replay = actions.add_parser(
        "replay",
        help="produce dead letters again to their origin topic",
        description="Produce each selected dead letter's key and value to its origin topic, as a first "
        "attempt, with imgpipe-replayed-from and imgpipe-replay-count headers. Either IDs, or --origin "
        "(with --reason/--since/--limit to narrow it). An entry whose origin is unknown refuses the "
        "whole request; nothing is sent then. The dead letters stay on their topic.",
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="<topic>:<partition>:<offset>")
    _selection_arguments(replay)
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed; send nothing")
    replay.add_argument("--json", action="store_true", help="report as JSON")
    replay.set_defaults(handler=replay_command)


def _selection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--origin", help="origin topic: its name, or its registry key (tasks-submit)")
    parser.add_argument("--reason", help="a substring of the reason (case-insensitive)")
    parser.add_argument(
        "--since", help="dead-lettered since: a duration ago (30m, 6h, 2d) or an ISO 8601 time"
    )
    parser.add_argument(
        "--limit", type=_positive_int, default=_LIMIT, help="at most this many (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds for Kafka (default: %(default)s)"
    )


def list_command(args: argparse.Namespace) -> int:
    from imgpipe.runtime.deadletters import DeadLetterError

    dead_letters = _dead_letters(args)
    try:
        listing = dead_letters.select(_selection(args))
    except (DeadLetterError, ValueError) as exc:
        return _fail("list", exc)
    now = datetime.now(UTC)
    if args.json:
        json.dump(
            {
                "dead_letters": [entry.summary(now) for entry in listing.entries],
                "truncated": listing.truncated,
            },
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    rows = [("ID", "AGE", "ORIGIN", "GROUP", "KEY", "BYTES", "REASON")]
    rows += [
        (
            entry.id,
            format_age(entry.age_seconds(now)),
            entry.origin_topic or "?",
            entry.group or "?",
            _clip(entry.key_text or "-", 40),
            str(entry.payload_bytes),
            _clip(entry.reason or "?", _REASON_WIDTH),
        )
        for entry in listing.entries
    ]
    _print_table(rows)
    if listing.truncated:
        print(f"(more match: showing the oldest {args.limit}; narrow with --since or raise --limit)")
    elif not listing.entries:
        print(f"no dead letters on {', '.join(dead_letters.topics)} match")
    return 0


def show_command(args: argparse.Namespace) -> int:
    from imgpipe.runtime.deadletters import DeadLetterError

    try:
        entry = _dead_letters(args).get(args.id)
    except DeadLetterError as exc:
        return _fail("show", exc)
    if args.json:
        json.dump(_detail(entry), sys.stdout, indent=2)
        print()
        return 0
    summary = entry.summary()
    summary["age"] = format_age(summary.pop("age_seconds"))
    for name, value in summary.items():
        print(f"{name + ':':<18}{'-' if value is None else value}")
    print("headers:")
    for name, value in sorted(entry.headers.items()):
        print(f"  {name}: {value.decode('utf-8', errors='replace')}")
    preview = (entry.value or b"")[:_PREVIEW_BYTES]
    more = " …" if entry.payload_bytes > _PREVIEW_BYTES else ""
    print(f"payload ({entry.payload_bytes} bytes): {preview!r}{more}")
    return 0


def replay_command(args: argparse.Namespace) -> int:
    from imgpipe.runtime.deadletters import DeadLetterError, ReplayRefused

    if bool(args.ids) == bool(args.origin):
        print("deadletters replay: give either IDs or --origin", file=sys.stderr)
        return 2
    if args.ids and (args.reason or args.since):
        print("deadletters replay: --reason and --since narrow --origin, not IDs", file=sys.stderr)
        return 2
    dead_letters = _dead_letters(args)
    try:
        if args.dry_run:
            entries = (
                [dead_letters.get(id_) for id_ in args.ids]
                if args.ids
                else dead_letters.select(_selection(args)).entries
            )
            for entry in entries:
                print(f"would replay {entry.id} to {entry.origin_topic or '? (refused: origin unknown)'}")
            return 0
        if args.ids:
            report = dead_letters.replay_ids(args.ids)
        else:
            report = dead_letters.replay_selection(_selection(args))
    except ReplayRefused as refused:
        for id_, why in refused.refused.items():
            print(f"deadletters replay: {id_}: {why}", file=sys.stderr)
        print("deadletters replay: nothing was replayed", file=sys.stderr)
        return 1
    except (DeadLetterError, ValueError) as exc:
        return _fail("replay", exc)
    finally:
        dead_letters.close()
    if args.json:
        json.dump(
            {
                "replayed": [
                    {"id": r.id, "topic": r.topic, "partition": r.partition, "offset": r.offset}
                    for r in report.replayed
                ],
                "truncated": report.truncated,
            },
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    for replayed in report.replayed:
        print(f"replayed {replayed.id} -> {replayed.topic}:{replayed.partition}:{replayed.offset}")
    print(f"{len(report.replayed)} replayed")
    if report.truncated:
        print(f"(more matched than --limit {args.limit}: the oldest were replayed)")
    return 0


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _detail(entry: DeadLetter) -> dict[str, Any]:
    return {
        **entry.summary(),
        "headers": {name: value.decode("utf-8", errors="replace") for name, value in entry.headers.items()},
        "payload_base64": None if entry.value is None else base64.b64encode(entry.value).decode(),
    }


def _dead_letters(args: argparse.Namespace) -> DeadLetters:
    from imgpipe.runtime.deadletters import DeadLetters

    settings = load_settings(RuntimeSettings)
    if "service_name" not in settings.model_fields_set:
        settings = settings.model_copy(update={"service_name": "imgpipe-cli"})
    return DeadLetters(settings, timeout_seconds=getattr(args, "timeout", 30.0))


def _selection(args: argparse.Namespace) -> Selection:
    from imgpipe.runtime.deadletters import Selection, parse_since

    return Selection(
        origin=args.origin,
        reason=args.reason,
        since=parse_since(args.since) if args.since else None,
        limit=args.limit,
    )


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _fail(action: str, exc: Exception) -> int:
    print(f"deadletters {action}: {exc}", file=sys.stderr)
    return 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
