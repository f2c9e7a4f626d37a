"""TensorBoard event files, one scalar per metric per epoch, in the run directory:
``tensorboard --logdir runs/`` shows every run by its folder's name.

Written with the ``tensorboard`` package's own record writer and protocol buffers over a
plain file. (Its ``EventFileWriter`` opens files through ``tf.io.gfile``, which imports
TensorFlow whenever it is installed: a numpy or torch run should not load it.)
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any


def tag(key: str) -> str:
    """A metrics row's key as a TensorBoard tag: val_loss -> val/loss, train_loss ->
    train/loss, images_per_second -> train/images_per_second, lr -> learning_rate."""
    if key == "lr":
        return "learning_rate"
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    return f"train/{key[6:] if key.startswith('train_') else key}"


class EventLog:
    """Scalars per epoch, flushed as each epoch ends. On a resumed run, the log first
    starts a new session at the resumed epoch, so that TensorBoard drops the later epochs
    an interrupted run had written."""

    def __init__(self, folder: Path, start_epoch: int = 0) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog, SourceMetadata
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = Event, Summary
        # unique and in creation order (TensorBoard reads a folder's files sorted by name): a resumed run
        # adds a file after the earlier ones, even in the same second and process, and never overwrites one
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{time.time_ns():020d}"
        self._writer = RecordWriter(open(folder / name, "xb"))
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2", source_metadata=SourceMetadata(writer="cnnspec")))
        if start_epoch:
            self._write(Event(wall_time=time.time(), step=start_epoch + 1, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, event: Any) -> None:
        self._writer.write(event.SerializeToString())
        self._writer.flush()

    def epoch(self, row: dict[str, Any]) -> None:
        values = [self._summary.Value(tag=tag(key), simple_value=float(value)) for key, value in row.items()
                  if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)]
        self._write(self._event(wall_time=time.time(), step=int(row["epoch"]), summary=self._summary(value=values)))

    def close(self) -> None:
        self._writer.close()
