"""What a run says as it goes: lines and progress bars on stderr, quiet when asked."""

from __future__ import annotations

from typing import Any


class Progress:
    """A rich bar per epoch on a terminal; one plain line per epoch otherwise."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, emoji=False)
        self.live = self.console.is_terminal and not quiet
        self._bar: Any = None

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        if not self.live:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("train", total=batches, stats="")

    def step(self, loss: float, accuracy: float, images_per_second: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, stats=f"loss {loss:.4f} acc {accuracy:.4f} {images_per_second:,.0f} img/s")

    def end_epoch(self, row: dict[str, float], epochs: int) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if not self.quiet:
            self.console.print(
                f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_accuracy']:.4f}  "
                f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.3g}  "
                f"{row['images_per_second']:,.0f} img/s  {row['seconds']:.1f}s",
                markup=False,
                soft_wrap=True,
            )

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, soft_wrap=True)
