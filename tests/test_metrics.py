"""MetricsWriter: a resumed run shows each step once, in metrics.jsonl and in TensorBoard."""

import struct

from tensorboardX.proto import event_pb2

from paced_jax.metrics import MetricsWriter, read_metrics


def _events(directory):
  """Every event of every TensorBoard file under `directory`, in file order (TFRecord framing:
  u64 length, u32 crc, payload, u32 crc)."""
  out = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      ev = event_pb2.Event()
      ev.ParseFromString(data[i + 12:i + 12 + n])
      out.append(ev)
      i += 12 + n + 4
  return out


def _tensorboard_view(events):
  """(tag, step) pairs TensorBoard shows: a SessionLog START at step s purges the earlier
  events at steps >= s (TensorBoard's documented purge rule for resumed runs)."""
  shown = []
  for ev in events:
    if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
      shown = [(tag, s) for tag, s in shown if s < ev.step]
    for v in ev.summary.value:
      shown.append((v.tag, ev.step))
  return shown


def test_resume_shows_each_step_once_in_jsonl_and_tensorboard(tmp_path):
  w = MetricsWriter(tmp_path)
  for s in range(6):
    w.write(s, {"loss": float(10 - s)})
  w.close()
  resumed = MetricsWriter(tmp_path)  # a run that resumes from the checkpoint at step 3
  resumed.truncate(3)
  for s in range(3, 8):
    resumed.write(s, {"loss": float(100 + s)})
  resumed.close()
  assert [(m["step"], m["loss"]) for m in read_metrics(tmp_path)] == (
      [(s, 10.0 - s) for s in range(3)] + [(s, 100.0 + s) for s in range(3, 8)])
  view = _tensorboard_view(_events(tmp_path / "tensorboard"))
  assert sorted(view) == [("loss", s) for s in range(8)]  # each step once


def test_a_fresh_run_writes_no_purge_marker(tmp_path):
  w = MetricsWriter(tmp_path)
  w.write(0, {"loss": 1.0})
  w.close()
  assert not any(ev.HasField("session_log") for ev in _events(tmp_path / "tensorboard"))
