"""A live progress display for people at a terminal (rich): total, rate, ETA, per source.

Only used when stderr is a terminal and --quiet is off.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from client.fetcher import Fetcher


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Renders a Fetcher's state a few times a second."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.console = Console(stderr=True)
        if self.console.size.height < 5:  # a terminal that reports no size
            self.console.size = (self.console.size.width, 25)
        self.live = Live(console=self.console, refresh_per_second=4, transient=True,
                         vertical_overflow="visible")
        self.last = 0.0

    def __enter__(self) -> Progress:  # noqa: PYI034
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def __call__(self, f: Fetcher) -> None:
        now = time.monotonic()
        if now - self.last < 0.25:
            return
        self.last = now
        plan = f.plan
        got = sum(min(plan.piece_size, plan.size - i * plan.piece_size)
                  for i, d in enumerate(f.store.done) if d)
        rates = [f.sched.source_rate(i) for i in range(len(f.sources))]
        rate = sum(rates)
        eta = (plan.size - got) / rate if rate > 0 else float("inf")
        head = Text(f"{self.name}  {human(got)} / {human(plan.size)}  {human(rate)}/s  "
                    f"ETA {'--' if eta == float('inf') else f'{eta:.0f}s'}")
        table = Table.grid(padding=(0, 2))
        for i, s in enumerate(f.sources):
            st = f.sched.stats(i)
            state = f"dropped: {st.dropped}" if st.dropped else f"{st.connections} conn"
            table.add_row(Text(s.url, overflow="ellipsis", no_wrap=True),
                          f"{human(rates[i])}/s", human(st.bytes), state)
        bar = Table.grid(expand=True)  # a bare ProgressBar ends without a line break
        bar.add_row(ProgressBar(total=max(plan.size, 1), completed=got))
        self.live.update(Group(head, bar, table))
