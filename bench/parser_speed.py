"""Parser speed on real mail: the header phase and the full body parse, per message.

    .venv/bin/python bench/parser_speed.py [--repeat 20] [--corpus ../shared/corpus]

Parses every message of the corpus (headers only, then headers + text + HTML + every attachment's
bytes) ``--repeat`` times and prints the median microseconds per message of each phase over five
rounds. To compare two versions, run it with each on ``PYTHONPATH`` in one sitting and quote the
ratio: the machine is shared and absolute figures drift.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from popflow.parsing.parser import parse_message
from popflow.raw import RawMessage


def _messages(corpus: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(corpus.rglob("*"))
            if path.is_file() and path.suffix not in (".md", ".tsv")]


def _headers(messages: list[bytes]) -> None:
    for data in messages:
        parse_message(RawMessage.from_bytes(data), "bench")


def _full(messages: list[bytes]) -> None:
    for data in messages:
        message = parse_message(RawMessage.from_bytes(data), "bench")
        _ = message.text, message.html
        for attachment in message.attachments:
            attachment.content()


def _per_message(action, messages: list[bytes], repeat: int) -> float:  # type: ignore[no-untyped-def]
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            action(messages)
        rounds.append((time.perf_counter() - started) / (repeat * len(messages)) * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    args = parser.parse_args()
    messages = _messages(args.corpus)
    _full(messages)  # warm up: imports, charset tables
    print(f"{len(messages)} messages, {sum(map(len, messages)) / 1e6:.1f} MB")
    print(f"headers only:  {_per_message(_headers, messages, args.repeat):8.1f} us/message")
    print(f"full parse:    {_per_message(_full, messages, max(1, args.repeat // 4)):8.1f} us/message")


if __name__ == "__main__":
    main()
