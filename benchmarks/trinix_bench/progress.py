"""Progress of a run on stderr."""

import sys


class Progress:
    """A tqdm bar on stderr, or a counter line per row where tqdm is not installed."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        self.bar = tqdm(total=total, file=sys.stderr, unit="row", dynamic_ncols=True) if tqdm else None
        self.total, self.done = total, 0

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label)
        else:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def finish_row(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
