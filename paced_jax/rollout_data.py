"""Training rows made from sampled responses: on-policy batches (the student's own rollouts,
optionally scored by a teacher behind a privileged prompt) and teacher reference responses."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from pathlib import Path

import jax
import numpy as np

from paced_jax import divergences
from paced_jax.config import Config, ConfigError, pick_bucket, to_dict
from paced_jax.data.packing import pack_rows
from paced_jax.data.pipeline import to_global_batch
from paced_jax.data.tokenizer import encode_prompt
from paced_jax.distributed import to_host
from paced_jax.rollouts import Rollouts
from paced_jax.sampler import Knobs
from paced_jax.verify import verify_batch


def teacher_references(cfg: Config, wd: Path, source, teacher: Rollouts, tok, verifier,
                       progress: bool = False):
  """Reference responses sampled once from the teacher, verified, cached as ArrayRecord under
  `data.reference_cache` (default <workdir>/references); a second run reads the cache (also
  after a run that failed because nothing verified). The cache key names what decides the
  responses and their verdicts: teacher, sampling, prompt template, tokenizer, verifier.
  `teacher`: a rollout engine holding the teacher (`rollouts.make_engine`)."""
  from paced_jax.data.references import build_references

  K = cfg.data.references_per_problem
  where = {source[i].id: i for i in range(len(source))}

  def generate_fn(problems):
    prompts = [encode_prompt(tok, p.prompt, cfg.data.chat_template) for p in problems]
    # Response k of pool problem i draws RNG stream i * K + k, so references do not depend on
    # how generation is chunked.
    streams = [where[p.id] * K + k for p in problems for k in range(K)]
    out = teacher.sample(prompts, rollouts=K, rng=jax.random.key(cfg.seed + 3),
                         knobs=Knobs.from_config(cfg.sample), stop_ids=tok.stop_ids,
                         pad_id=tok.pad_id, streams=streams)
    toks, lens = to_host(out.tokens_BS), to_host(out.lengths_B)
    texts = []
    for r in range(len(lens)):
      row = toks[r, :lens[r]].tolist()
      stopped = bool(row) and row[-1] in tok.stop_ids
      # Drop the stop token: packing appends EOS to a complete reference, and none to one cut
      # at the budget (marked eos=False).
      text = tok.decode(row[:-1] if stopped else row)
      texts.append(text if stopped else {"text": text, "eos": False})
    return [texts[i * K:(i + 1) * K] for i in range(len(problems))]

  key = json.dumps({"teacher": cfg.train.init_teacher, "model": to_dict(cfg.teacher),
                    "sample": to_dict(cfg.sample), "k": K, "seed": cfg.seed,
                    "template": [cfg.data.chat_template, list(cfg.data.chat_template_kwargs)],
                    "tokenizer": cfg.data.tokenizer, "verifier": cfg.paced.verifier,
                    "marker": cfg.paced.answer_marker}, sort_keys=True)
  return build_references(source, cfg.data, generate_fn=generate_fn, verify=verifier,
                          cache_dir=cfg.data.reference_cache or str(wd / "references"),
                          cache_key=key, chunk_size=max(cfg.sample.batch_size // K, 1),
                          progress=progress)


class FreshRollouts:
  """One refresh's estimation rollouts kept as on-policy training rows (paced.reuse_rollouts).

  `take(i, step)` hands out problem i's next unused response (rollout order) while the round is
  at most `max_age` steps old, else None. The responses are saved once per round under
  `<workdir>/rollouts/round_R.npz` and the counts taken ride in the checkpoint's meta, so a
  resumed run hands out exactly what an uninterrupted one would."""

  def __init__(self, max_age: int):
    self.max_age, self.round, self.step = max_age, -1, -1
    self.rows: dict[int, list[np.ndarray]] = {}
    self.used: dict[int, int] = {}

  def set(self, round_: int, step: int, index, rollouts, path: Path | None = None) -> None:
    """index[j] is the pool index of `rollouts[j]` (estimate.Rollout, problem-major)."""
    self.round, self.step, self.used = round_, step, {}
    self.rows = {}
    for i, r in zip(index, rollouts):
      self.rows.setdefault(int(i), []).append(np.asarray(r.tokens, np.int32))
    if path is not None:
      flat = [(i, t) for i, ts in self.rows.items() for t in ts]
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(".tmp.npz")
      np.savez(tmp, round=np.int64(round_), step=np.int64(step),
               index=np.asarray([i for i, _ in flat], np.int64),
               lengths=np.asarray([len(t) for _, t in flat], np.int64),
               tokens=np.concatenate([t for _, t in flat] or [np.zeros(0, np.int32)]))
      tmp.replace(path)

  def take(self, i: int, step: int) -> np.ndarray | None:
    rows = self.rows.get(int(i), ())
    k = self.used.get(int(i), 0)
    if step - self.step >= self.max_age or k >= len(rows):
      return None
    self.used[int(i)] = k + 1
    return rows[k]

  def state(self) -> dict:
    return {"round": self.round, "used": {str(i): k for i, k in sorted(self.used.items())}}

  def restore(self, state: dict, directory: Path) -> None:
    """The round's responses from `directory/round_R.npz`, less those already taken."""
    if state.get("round", -1) < 0:
      return
    path = directory / f"round_{state['round']:05d}.npz"
    if not path.is_file():
      raise ConfigError(f"{path} is missing: the checkpoint's round reuses its estimation "
                        "rollouts (paced.reuse_rollouts); restore the file, or resume from an "
                        "earlier checkpoint")
    with np.load(path) as f:
      self.round, self.step = int(f["round"]), int(f["step"])
      ends = np.cumsum(f["lengths"])
      self.rows = {}
      for i, t in zip(f["index"], np.split(f["tokens"], ends[:-1]) if len(ends) else []):
        self.rows.setdefault(int(i), []).append(t.astype(np.int32))
    self.used = {int(i): int(k) for i, k in state["used"].items()}


def split_for_reuse(ids, rollouts) -> tuple[np.ndarray, np.ndarray, list]:
  """(successes [N], trials [N], reused rollouts) of a refresh under paced.reuse_split: problem
  ids[i]'s rollouts with even index k (0, 2, 4, ...) give its pass rate, those with odd k are
  the ones reused as training rows. A reused row's outcome then plays no part in the weight
  that draws it: reusing the rollouts the weight was computed from selects rows on their own
  outcomes (under paced weights, problems whose rollouts happened to succeed are drawn more,
  and take their successful rollouts along: benchmarks/adaptive_k.py measures it)."""
  where = {str(i): j for j, i in enumerate(ids)}
  s, n = np.zeros(len(where), np.int64), np.zeros(len(where), np.int64)
  reused = []
  for r in rollouts:
    if r.index % 2:
      reused.append(r)
    else:
      j = where[r.problem_id]
      s[j] += bool(r.correct)
      n[j] += 1
  return s, n, reused


_VERIFY: list[concurrent.futures.ThreadPoolExecutor] = []
_VERIFY_LOCK = threading.Lock()


def _verify_pool() -> concurrent.futures.ThreadPoolExecutor:
  """One host thread that decodes and verifies training rollouts (paced.train_outcomes) while
  the steps go on; its batches run in order (each fans out over paced.verify_workers)."""
  with _VERIFY_LOCK:
    if not _VERIFY:
      _VERIFY.append(concurrent.futures.ThreadPoolExecutor(1, "paced-train-verify"))
    return _VERIFY[0]


def _decode_and_verify(tokens, decode, problems, verifier, workers: int) -> np.ndarray:
  return verify_batch([decode(t.tolist()) for t in tokens], problems, verifier,
                      max_workers=workers)


def observe_outcomes(run, step: int, index, tokens) -> None:
  """paced.train_outcomes: queues the verification of the rollouts sampled for `step`
  (`tokens[j]`: pool problem index[j]'s response, stop token included, as estimation verifies
  it) and records its Future in the table as pending outcomes of `step`; nothing waits here."""
  problems = [run.problems[int(i)] for i in index]
  fut = _verify_pool().submit(_decode_and_verify, [np.asarray(t).copy() for t in tokens],
                              run.tokenizer.decode, problems, run.verifier,
                              run.cfg.paced.verify_workers)
  run.table.observe([p.id for p in problems], fut, step)


def on_policy_batch(run, state, batch: dict, step: int) -> dict:
  """Replaces the reference responses of a sampled batch by the student's rollouts: fresh ones
  sampled now through the run's engine (row b draws RNG stream b of the step's key), or
  (paced.reuse_rollouts) this round's unused estimation rollouts; only the rows without one
  are sampled. paced.train_outcomes: the rows sampled here are verified in a host thread and
  their outcomes go to the pass-rate table (`observe_outcomes`; reused rows are not: their
  outcomes were the estimate's, or held out of it by paced.reuse_split). Not in generated runs
  (every round's pool is new)."""
  cfg, tok, pool = run.cfg, run.tokenizer, run.pipeline.pool
  index = to_host(batch["index"])
  prompts = [pool.prompt(int(i)) for i in index]
  got = [run.fresh.take(int(i), step) if run.fresh is not None else None for i in index]
  missing = [b for b, t in enumerate(got) if t is None]
  run.reused_rows = len(index) - len(missing)
  if missing:
    engine = run.student_engine(state)
    out = engine.sample([prompts[b].tolist() for b in missing], rollouts=1,
                        rng=jax.random.fold_in(jax.random.key(cfg.seed + 1), step),
                        knobs=Knobs.from_config(cfg.sample), stop_ids=tok.stop_ids,
                        pad_id=tok.pad_id, streams=missing)
    run.compute["rollout_flops"] += out.flops()
    sampled, sampled_lens = to_host(out.tokens_BS), to_host(out.lengths_B)
    for j, b in enumerate(missing):
      got[b] = sampled[j, :sampled_lens[j]]
    if cfg.paced.train_outcomes and run.synthesis is None:
      observe_outcomes(run, step, index[missing], [got[b] for b in missing])
  toks = [np.asarray(t) for t in got]
  lens = [len(t) for t in toks]
  priv = None
  if divergences.teacher_is_student(cfg.loss.mode):
    # The teacher (the student itself) scores the same response after a prompt that shows the
    # reference solution.
    priv = [np.asarray(encode_prompt(tok, cfg.loss.privileged_template.format(
        prompt=run.problems[int(i)].prompt, solution=run.problems[int(i)].solution or ""),
        cfg.data.chat_template), np.int32) for i in index]
  # Every row must fit the largest length bucket: a response is capped at what its prompt (and
  # the teacher's privileged prompt) leaves, and at data.max_response_len.
  longest = cfg.data.length_buckets[-1]
  room = [min(cfg.data.max_response_len, longest - len(p),
              longest - len(priv[b]) if priv is not None else longest) for b, p in
          enumerate(prompts)]
  if min(room) < 1:
    b = int(np.argmin(room))
    raise ConfigError(f"problem {run.problems[int(index[b])].id!r}: its prompt (or privileged "
                      f"prompt, loss.privileged_template) leaves no room for a response in the "
                      f"largest data.length_buckets entry {longest}; add a larger bucket")
  responses = [toks[b][:min(lens[b], room[b])] for b in range(len(index))]
  T = pick_bucket(max(len(p) + len(r) for p, r in zip(prompts, responses)),
                  cfg.data.length_buckets)
  rows = pack_rows(prompts, responses, T, tok.pad_id)
  rows["weights"] = to_host(batch["weights"])
  rows["index"] = index
  if priv is not None:
    Tt = pick_bucket(max(len(p) + len(r) for p, r in zip(priv, responses)),
                     cfg.data.length_buckets)
    t_rows = pack_rows(priv, responses, Tt, tok.pad_id)
    rows.update(teacher_tokens=t_rows["tokens"], teacher_positions=t_rows["positions"],
                teacher_loss_mask=t_rows["loss_mask"])
  # Every process sampled the whole global batch (same RNG, same rows); each keeps its slice.
  P, L = jax.process_count(), len(index) // jax.process_count()
  mine = slice(jax.process_index() * L, (jax.process_index() + 1) * L)
  return to_global_batch({k: v[mine] for k, v in rows.items()}, run.mesh, P)
