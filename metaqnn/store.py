"""The durable record of a search: one SQLite database in the work directory.

Every sample the agent draws is journaled (table `samples`) before it is evaluated, and
every result (trained, failed or re-sampled; table `models`) is committed before the
agent learns from it. Both carry one global `event` number: the order in which the
agent consumed them, which is what an exact resume replays. The database also holds the run's fingerprint (data set, search
space, seed, agent), so that a work directory made for another search is refused.
SQLite's WAL journal keeps the record whole through a `kill -9` at any moment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sqlite3
import time
from typing import Callable, Iterator, Optional

from metaqnn import results
from metaqnn.errors import UserError
from metaqnn.results import Result

# The work directory: the record, and the folders the search and its commands write.
DB_FILE = "metaqnn.db"
AGENT_DIR, TENSORBOARD_DIR, PLOTS_DIR, FINAL_DIR = "agent", "tensorboard", "plots", "final"
_CREATING = ".metaqnn.db.creating"
LOCK_FILE = ".lock"
FORMAT = "metaqnn-search/1"
DATA_IN_MEMORY = "data_in_memory"  # a meta key: the search was given its data in memory


class WorkdirError(UserError):
  """The work directory is foreign, corrupt, or made for another search."""


@dataclasses.dataclass(kw_only=True)
class ModelRecord(Result):
  """One sampled model: its `Result` and where it sits in the search."""
  iteration: int
  sample: int
  epsilon: float
  stage: int
  resampled: bool = False
  time: float = dataclasses.field(default_factory=time.time)

  def result(self) -> Result:
    """The result alone (for presenting a re-sampled model's stored outcome again)."""
    return Result(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Result)})


@dataclasses.dataclass
class Sample:
  """One architecture drawn by the agent, journaled before it is evaluated."""
  arch: str
  epsilon: float
  stage: int
  id: int = -1
  event: int = -1
  time: float = dataclasses.field(default_factory=time.time)


# A samples row in the order of Sample's fields: Sample(*row).
_SAMPLE_COLUMNS = ", ".join(f.name for f in dataclasses.fields(Sample))
_COLUMNS = {f.name: f for f in dataclasses.fields(ModelRecord)}
_KEYS = ("iteration", "sample")  # declared in the schema below with their constraints
# Every evaluation attempt, journaled before it starts. `ended` stays NULL while it runs,
# so a NULL left by an earlier process means that process died during it (a crash, or a
# kill -9, which cannot be told apart); a clean stop (Ctrl-C, SIGTERM) ends it.
_ATTEMPTS = """
CREATE TABLE IF NOT EXISTS attempts (
  id INTEGER PRIMARY KEY,
  sample INTEGER NOT NULL REFERENCES samples (id),
  started REAL NOT NULL,
  ended TEXT
);
"""
ENDED = ("done", "interrupted", "lost")  # how an attempt can end
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
  id INTEGER PRIMARY KEY,
  event INTEGER NOT NULL UNIQUE,
  arch TEXT NOT NULL,
  epsilon REAL NOT NULL,
  stage INTEGER NOT NULL,
  time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
  iteration INTEGER PRIMARY KEY,
  event INTEGER NOT NULL UNIQUE,
  sample INTEGER NOT NULL UNIQUE REFERENCES samples (id),
  {columns}
);
CREATE INDEX IF NOT EXISTS models_arch ON models (arch, resampled);
""".replace("{columns}", ",\n  ".join(f"{name} {results.sql_type(f)}"
                                     for name, f in _COLUMNS.items() if name not in _KEYS))
_SCHEMA += _ATTEMPTS


class Store:
  """Append-only record of a search's models, in `workdir/metaqnn.db`."""

  def __init__(self, workdir: str, fingerprint: dict, data: Optional[dict] = None,
               check: Optional[Callable[[], None]] = None):
    """Opens or creates the record; raises `WorkdirError` for a foreign or other search.

    `data`: a digest of the data the rewards are measured on (`input_pipeline.digest`);
    a record made on other data is refused like another search. `check`: called on an
    existing record once it is accepted and locked, before anything is written to it;
    whatever it raises refuses the opening, the record left byte for byte as it was."""
    self.path = os.path.join(workdir, DB_FILE)
    creating = os.path.join(workdir, _CREATING)
    check_workdir(workdir)
    exists = os.path.exists(self.path)
    with self._closed_on_failure():
      if not exists:  # built aside, then renamed: a kill never leaves half a record
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(creating):
          os.remove(creating)
        db = sqlite3.connect(creating, isolation_level=None)
        db.executescript(_SCHEMA)
        db.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("format", FORMAT), ("fingerprint", json.dumps(fingerprint, sort_keys=True)),
            ("created", str(time.time()))] + [("data", json.dumps(data))] * (data is not None))
        db.close()
        os.replace(creating, self.path)
      self._check_sqlite_header()
      # Checked through an immutable, read-only view first: a refused work directory is
      # left byte for byte as it was (a writable connection could checkpoint its WAL).
      view = sqlite3.connect(f"file:{self.path}?immutable=1", uri=True)
      try:
        _check_pages(view, self.path)
        recorded_data = self._check(view, fingerprint, data)
      finally:
        view.close()
      self._lock = _lock(workdir)
      if check is not None and exists:
        check()
      self.db = sqlite3.connect(self.path, isolation_level=None)
      self.db.execute("PRAGMA journal_mode=WAL")
      self.db.execute("PRAGMA synchronous=NORMAL")
      self.db.executescript(_ATTEMPTS)  # records made before the attempts journal
      self._add_missing_columns()
      if data is not None and not recorded_data:
        # A record made before digests were kept, or one whose digest is still in the
        # write-ahead log of a run killed just after writing it (the view above reads
        # the database file only): checked again, now with the log, before it is written.
        self._check_data(dict(self.db.execute("SELECT key, value FROM meta").fetchall()),
                         fingerprint, data, opened=True)
        self.set_meta("data", data)

  @contextlib.contextmanager
  def _closed_on_failure(self):
    """Within the block, a refusal or failure closes what was opened (nothing stays open
    or locked), and a file that SQLite cannot read is a WorkdirError."""
    try:
      yield
    except BaseException as e:
      self.close()
      if isinstance(e, sqlite3.DatabaseError):
        raise WorkdirError(unusable(self.path, e)) from None
      raise

  def _check_sqlite_header(self) -> None:
    if not os.path.isfile(self.path):
      raise WorkdirError(f"{self.path} is not a file; the work directory is corrupt or "
                         "foreign (it was left untouched)")
    with open(self.path, "rb") as f:
      if f.read(16) != b"SQLite format 3\x00":
        raise WorkdirError(f"{self.path} is not an SQLite database; the work directory is "
                           "corrupt or foreign (it was left untouched)")

  def _check(self, db: sqlite3.Connection, fingerprint: dict, data: Optional[dict]) -> bool:
    """Raises WorkdirError unless the record was made for this search (and, given `data`,
    on this data); returns whether it holds a data digest."""
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
      raise WorkdirError(f"{self.path} is not a {FORMAT} record")
    stored = comparable(meta_json(meta, "fingerprint", self.path))
    given = comparable(json.loads(json.dumps(fingerprint, sort_keys=True)))
    if stored != given:
      diff = differences(stored, given)
      raise WorkdirError(
          f"the work directory {os.path.dirname(self.path)} was made for another search "
          f"(differs in: {', '.join(diff)}{_recorded(stored, given)}); it was left "
          "untouched. Resume it with the settings it was made with, or use a new --workdir")
    return self._check_data(meta, fingerprint, data)

  def _check_data(self, meta: dict, fingerprint: dict, data: Optional[dict],
                  opened: bool = False, harm: Optional[tuple[str, str]] = None) -> bool:
    """Raises WorkdirError if `meta` holds a digest of other data than `data`; returns
    whether it holds one. `opened`: the record is already open for writing (the message
    then says it was left as it was, not untouched). `harm`: what going on would do and
    what to do instead (default: a resume's)."""
    if data is None or "data" not in meta:
      return "data" in meta
    try:
      was = json.loads(meta["data"])
    except ValueError:
      was = None
    if was == data:
      return True
    where = os.path.dirname(self.path)
    if not isinstance(was, dict):
      raise WorkdirError(f"the data digest recorded in {where} is unreadable; the work "
                         "directory is corrupt (it was left untouched)")
    count = lambda v: f"{v:,}" if isinstance(v, int) else "?"
    sizes = lambda d: ", ".join(f"{count(d.get(k))} {k}" for k in ("train", "val", "test"))
    what = (f"{sizes(was)} examples then, {sizes(data)} now" if sizes(was) != sizes(data)
            else f"the same sizes ({sizes(data)}), other contents")
    harm, way_out = harm or ("Resuming would mix rewards measured on two data sets",
                             "Restore the data, or use a new --workdir")
    raise WorkdirError(
        f"the data of {fingerprint.get('dataset')} differs from what this search began "
        f"on ({what}): files changed or added, other arrays given, or the same files read "
        f"differently after a Pillow, NumPy, tfds or metaqnn upgrade (folders: .jfif, .jpe, "
        f".pbm, .pnm and .avif images are read since 2026-11-29). {harm}; the work directory "
        f"was left {'as it was' if opened else 'untouched'}. {way_out}")

  def _add_missing_columns(self) -> None:
    """Records made before a field existed get its column (empty for their old rows)."""
    have = _existing_columns(self.db)
    with self.db:
      for name, f in _COLUMNS.items():
        if name not in have:
          self.db.execute(f"ALTER TABLE models ADD COLUMN {name} {results.sql_type(f)}")

  @property
  def _columns(self) -> list[str]:
    """The record's columns this database has (older read-only records may lack some)."""
    if getattr(self, "_cols", None) is None:
      have = _existing_columns(self.db)
      self._cols = [name for name in _COLUMNS if name in have]
    return self._cols

  # -- writing -------------------------------------------------------------------------

  def _next_event(self) -> int:
    row = self.db.execute("SELECT MAX(e) FROM (SELECT MAX(event) AS e FROM samples "
                          "UNION ALL SELECT MAX(event) FROM models)").fetchone()
    return 0 if row[0] is None else row[0] + 1

  def add_sample(self, sample: Sample) -> Sample:
    """Journals a sample before it is evaluated; returns it with its id and event."""
    with self.db:
      self.db.execute("BEGIN IMMEDIATE")
      sample.event = self._next_event()
      cur = self.db.execute("INSERT INTO samples (event, arch, epsilon, stage, time) "
                            "VALUES (?, ?, ?, ?, ?)", (sample.event, sample.arch,
                                                       sample.epsilon, sample.stage,
                                                       sample.time))
      sample.id = cur.lastrowid
    return sample

  def add(self, record: ModelRecord) -> ModelRecord:
    """Commits one result (its `iteration` and event are assigned here); durable on return."""
    if record.status not in results.STATUSES:
      raise ValueError(f"unknown status {record.status!r}; known: {', '.join(results.STATUSES)}")
    row = {name: results.to_sql(f, getattr(record, name)) for name, f in _COLUMNS.items()}
    with self.db:
      self.db.execute("BEGIN IMMEDIATE")
      row["iteration"] = record.iteration = self.count()
      event = self._next_event()
      self.db.execute(f"INSERT INTO models (event, {', '.join(self._columns)}) VALUES "
                      f"(?, {', '.join('?' * len(self._columns))})",
                      [event] + [row[f] for f in self._columns])
    return record

  def start_attempt(self, sample: int) -> int:
    """Journals that an evaluation of `sample` starts now; returns the attempt's id."""
    with self.db:
      self.db.execute("BEGIN IMMEDIATE")
      cur = self.db.execute("INSERT INTO attempts (sample, started) VALUES (?, ?)",
                            (sample, time.time()))
    return cur.lastrowid

  def end_attempts(self, ids, how: str) -> None:
    """Marks attempts as ended `how` (one of `ENDED`): they did not crash the process."""
    if how not in ENDED:
      raise ValueError(f"unknown attempt end {how!r}")
    with self.db:
      self.db.execute("BEGIN IMMEDIATE")
      self.db.executemany("UPDATE attempts SET ended = ? WHERE id = ? AND ended IS NULL",
                          [(how, i) for i in ids])

  def set_meta(self, key: str, value) -> None:
    with self.db:
      self.db.execute("BEGIN IMMEDIATE")
      self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

  # -- reading -------------------------------------------------------------------------

  def meta(self) -> dict:
    return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

  def check_data(self, data: dict, dataset: str, harm: tuple[str, str]) -> None:
    """Raises WorkdirError if the record holds a digest (`input_pipeline.digest`) of
    other data than `data`, the digest of `dataset` as it reads now; `harm`: what going
    on would do, and what to do instead."""
    self._check_data(self.meta(), {"dataset": dataset}, data, harm=harm)

  def config(self):
    """The run config stored with the record (an `ml_collections.ConfigDict`)."""
    import ml_collections
    meta = self.meta()
    if "config" not in meta:
      raise WorkdirError(f"{os.path.dirname(self.path)} has no stored config")
    return ml_collections.ConfigDict(meta_json(meta, "config", self.path))

  def count(self) -> int:
    return self.db.execute("SELECT COUNT(*) FROM models").fetchone()[0]

  def unique_count(self) -> int:
    """Unique models toward the schedule (`results.counts_toward_schedule`)."""
    return self.db.execute("SELECT COUNT(*) FROM models WHERE resampled = 0 "
                           "AND status != ?", (results.OVER_BUDGET,)).fetchone()[0]

  def trained(self, arch: str) -> Optional[ModelRecord]:
    """The first (non re-sampled) record of `arch`, if it was evaluated before (trained
    or failed) or recorded over budget: either way it is not evaluated again."""
    cur = self.db.execute(f"SELECT {', '.join(self._columns)} FROM models "
                          "WHERE arch = ? AND resampled = 0 LIMIT 1", (arch,))
    row = cur.fetchone()
    return self._record(row) if row else None

  def models(self) -> Iterator[ModelRecord]:
    """Records in iteration order."""
    cur = self.db.execute(f"SELECT {', '.join(self._columns)} FROM models "
                          "ORDER BY iteration")
    return (self._record(r) for r in cur.fetchall())

  def events(self, after: int = -1) -> list[tuple[int, object]]:
    """(event, Sample or ModelRecord) after event `after`, in the order the agent used them."""
    samples = self.db.execute(f"SELECT {_SAMPLE_COLUMNS} FROM samples WHERE event > ?",
                              (after,)).fetchall()
    models = self.db.execute(f"SELECT event, {', '.join(self._columns)} FROM models "
                             "WHERE event > ?", (after,)).fetchall()
    out = [(s.event, s) for s in (Sample(*r) for r in samples)]
    out += [(r[0], self._record(r[1:])) for r in models]
    return sorted(out, key=lambda e: e[0])

  def learned(self, through: int) -> list[tuple[str, float]]:
    """(arch, reward) of the results up to event `through`, in the order the agent
    learned them: its replay memory then."""
    return [(a, float(r)) for a, r in self.db.execute(
        "SELECT arch, accuracy FROM models WHERE event <= ? ORDER BY event", (through,))]

  def last_event(self) -> int:
    return self._next_event() - 1

  def pending(self) -> list[Sample]:
    """Samples journaled but without a result: in flight when the search stopped."""
    rows = self.db.execute(f"SELECT {_SAMPLE_COLUMNS} FROM samples "
                           "WHERE id NOT IN (SELECT sample FROM models) ORDER BY id").fetchall()
    return [Sample(*r) for r in rows]

  def crashes(self, arch: str) -> int:
    """Attempts at `arch`, still without a result, that died: their process (never
    ended) or their worker (`lost`)."""
    return self.db.execute(
        "SELECT COUNT(*) FROM attempts a JOIN samples s ON a.sample = s.id "
        "WHERE s.arch = ? AND (a.ended IS NULL OR a.ended = 'lost') "
        "AND s.id NOT IN (SELECT sample FROM models)", (arch,)).fetchone()[0]

  def attempts(self) -> list[dict]:
    """Every evaluation attempt in order: sample, arch, started, ended."""
    if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'attempts'").fetchone():
      return []  # a record made before attempts were journaled
    rows = self.db.execute(
        "SELECT a.sample, s.arch, a.started, a.ended FROM attempts a JOIN samples s "
        "ON a.sample = s.id ORDER BY a.id").fetchall()
    return [dict(sample=r[0], arch=r[1], started=r[2], ended=r[3]) for r in rows]

  def _record(self, row) -> ModelRecord:
    values = dict(zip(self._columns, row))
    return ModelRecord(**{name: results.from_sql(f, values.get(name))
                          for name, f in _COLUMNS.items()})

  def __enter__(self) -> "Store":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Closes the record. The writer leaves one file behind: its WAL is folded into the
    database (rollback mode until the next search opens it) and its lock is removed."""
    db = getattr(self, "db", None)  # None if opening failed before it connected
    if db is not None and getattr(self, "_lock", None) is not None:
      try:
        db.execute("PRAGMA journal_mode=DELETE")
      except sqlite3.OperationalError:  # another connection still reads: keep the WAL
        pass
    if db is not None:
      db.close()
    if getattr(self, "_lock", None) is not None:
      _unlock(self._lock)
      self._lock = None


def _existing_columns(db: sqlite3.Connection) -> set[str]:
  return {row[1] for row in db.execute("PRAGMA table_info(models)")}


def _lock(workdir: str, what: str = "a search or its final stage in"):
  """An exclusive lock on the work directory: one search process at a time (`what` runs
  there, for the refusal's words).

  The holder removes the lock file when it closes cleanly, so a lock won on a file that
  has since been removed (or replaced) is no lock: try again on the file now there."""
  path = os.path.join(workdir, LOCK_FILE)
  for _ in range(5):
    f = open(path, "a")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.close()
      if (holder(workdir) or {}).get("pid") == os.getpid():  # a notebook's earlier cell
        raise WorkdirError(
            f"this process is already running {what} {workdir} (another thread, or an "
            "earlier call whose store was never closed); let it finish, or restart the "
            "process") from None
      raise WorkdirError(f"another metaqnn process is running {what} {workdir}; wait for "
                         "it to finish (or stop it) first") from None
    try:
      if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
        os.ftruncate(f.fileno(), 0)  # who holds it, and since when: for `holder`
        f.write(f"{os.getpid()} {time.time()!r}\n")
        f.flush()
        return f
    except FileNotFoundError:
      pass
    f.close()
  raise WorkdirError(f"cannot lock {workdir}: its lock file keeps changing")


def _unlock(f) -> None:
  try:
    os.remove(f.name)  # still ours: removed before the flock is released
  except FileNotFoundError:  # its folder removed meanwhile: nothing to remove
    pass
  finally:
    f.close()


def lock(workdir: str, what: str = "a search or its final stage in") -> Callable[[], None]:
  """Takes `workdir`'s lock, as a search does (for the final stage, which must not run
  beside the search or another final stage: both would train the same models; and for a
  transfer run's output folder); returns what releases it."""
  f = _lock(workdir, what)
  return lambda: _unlock(f)


def holder(workdir: str) -> Optional[dict]:
  """The live process that holds `workdir`'s lock (a search or its final stage running
  now): {"pid", "since"}; None if none. Read from the lock file, never locked: a look
  must not make a search that is starting refuse."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    with open(path) as f:
      pid, since = f.read().split()
    pid, since, st = int(pid), float(since), os.stat(path)
  except (OSError, ValueError):  # no lock file (a clean stop removes it), or an old one
    return None
  held = _flock_held(st, pid)  # a kill -9 leaves the file behind, without its lock
  if held is None:  # no /proc/locks (not Linux): is its process alive, at least?
    try:
      os.kill(pid, 0)
      held = True
    except ProcessLookupError:
      held = False
    except PermissionError:  # alive, another user's
      held = True
  return {"pid": pid, "since": since} if held else None


def _flock_held(st: os.stat_result, pid: int) -> Optional[bool]:
  """Whether process `pid` holds a flock on the file of `st` now (Linux's /proc/locks;
  None where there is none). A process id alone may have been reused since; the lock on
  that file cannot. (Matched by inode number: overlay file systems show another device.)"""
  try:
    with open("/proc/locks") as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  return any(len(p) > 5 and p[1] == "FLOCK" and p[4] == str(pid)
             and p[5].rsplit(":", 1)[-1] == str(st.st_ino)
             for p in (line.split() for line in lines))


def comparable(fp: dict) -> dict:
  """A fingerprint without what changes nothing (applied to both sides, so records that
  stored them match): the soft objective's target and weight when there is no objective;
  the search's optimizer when it is Adam, the default, with SGD's momentum, unused then
  (a record made in Python with train.optimizer="adam" stored them)."""
  b = fp.get("budget")
  if b and not b.get("objective"):
    fp = dict(fp, budget={k: v for k, v in b.items() if k not in ("target", "weight")})
  t = fp.get("training", {}).get("train")
  if t:
    fp = dict(fp, training=dict(fp["training"], train=without_default_optimizer(t)))
  return fp


def without_default_optimizer(train: dict) -> dict:
  """The search's training settings without its optimizer when that is Adam, the
  default, nor SGD's momentum, which Adam ignores: as records made before the search's
  optimizer was a setting hold them."""
  if train.get("optimizer", "adam") != "adam":
    return train
  return {k: v for k, v in train.items() if k not in ("optimizer", "momentum")}


def differences(stored: dict, given: dict, prefix: str = "") -> list[str]:
  """The settings (dotted paths, e.g. training.train.epochs) in which two fingerprints
  differ; a section whose fields differ too (another early stopping rule) by its name,
  except the training settings and a rule of the same kind, named field by field (one
  set only on one side, such as train.optimizer or a rule's top, too). Their copy of the
  data set's name is left out: "dataset" says it."""
  out = []
  for k in sorted(set(stored) | set(given)):
    a, b = stored.get(k), given.get(k)
    if a == b or prefix + k == "training.dataset.name":
      continue
    nested = isinstance(a, dict) and isinstance(b, dict) and (
        set(a) == set(b) or (prefix + k).startswith("training")
        or (prefix + k == "early_stop" and a.get("kind") == b.get("kind")))
    out += differences(a, b, f"{prefix}{k}.") if nested else [prefix + k]
  return out


def _recorded(stored: dict, given: dict) -> str:
  """What the record was made with, where the data set (a path given another way), the
  budget or the early stopping rule (their flags left off on resume) differs."""
  out = ""
  if stored.get("dataset") != given.get("dataset"):
    out += f"; it was made on {stored.get('dataset')}, not {given.get('dataset')}"
  if stored.get("budget") != given.get("budget"):
    from metaqnn import budget as budget_lib
    default = budget_lib.Budget().to_json()
    given_budget = given.get("budget") or {}
    # Its settings other than the defaults, and those this run gives otherwise.
    limits = {k: v for k, v in (stored.get("budget") or {}).items()
              if v != default.get(k) or v != given_budget.get(k, default.get(k))}
    out += ("; it was made without a budget" if not stored.get("budget") else
            "; it was made with budget " + ", ".join(f"{k}={v}" for k, v in sorted(
                limits.items())) + ": give those --config.budget flags")
  if "early_stop" in stored and stored["early_stop"] != given.get("early_stop"):
    out += (f"; it was made with early_stop {rule_text(stored['early_stop'])}: give those "
            "--config.early_stop flags")
  return out


def rule_text(rule: dict) -> str:
  """An early stopping rule's recorded settings as flags' values, with the defaults the
  fingerprint leaves out named (a predictor's top=1), so that giving them resumes."""
  rule = dict(rule)
  if rule.get("kind") == "predictor":
    rule.setdefault("top", 1)
  return ", ".join(f"{k}={v}" for k, v in sorted(rule.items()))


def check_workdir(workdir: str) -> None:
  """Raises `WorkdirError` for a path that cannot hold a search: a file, or a directory
  with other files and no record. (The Store checks again; a search checks first, before
  it loads any data.)"""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"{workdir} is a file, not a directory")
  if os.path.exists(os.path.join(workdir, DB_FILE)):
    for folder in (AGENT_DIR, TENSORBOARD_DIR, PLOTS_DIR, FINAL_DIR):
      path = os.path.join(workdir, folder)
      if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"{path} is a file, not a folder: the search writes there; move "
                           "it aside (the record is left untouched)")
    return
  if os.path.isdir(workdir) and set(os.listdir(workdir)) - {_CREATING}:
    raise WorkdirError(f"{workdir} is not empty and holds no metaqnn search "
                       f"(no {DB_FILE}); use a new or empty work directory")
  folders_to_make(workdir)


def folders_to_make(workdir: str) -> list[str]:
  """The folders that making `workdir` creates, deepest first ([] if it exists); a
  `WorkdirError` naming the reason where it cannot be made or written in (a file, or a
  folder that is not writable)."""
  missing, above = [], os.path.abspath(workdir)
  while not os.path.exists(above):
    missing.append(above)
    above = os.path.dirname(above)
  if not os.path.isdir(above):
    raise WorkdirError(f"cannot make {workdir}: {above} is a file, not a directory")
  if not os.access(above, os.W_OK | os.X_OK):
    raise WorkdirError(f"cannot make {workdir}: {above} is not writable")
  return missing


def stored_meta(workdir: str) -> dict:
  """`workdir`'s record's meta table (values as stored: JSON text); {} if there is none
  or it cannot be read (the Store says what is wrong when it opens). Read through an
  immutable view, like the Store's check, so that a work directory refused next is left
  untouched (what only a killed run's write-ahead log holds is not seen)."""
  path = os.path.join(workdir, DB_FILE)
  if not os.path.isfile(path):
    return {}
  try:
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
      return dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
      db.close()
  except sqlite3.DatabaseError:
    return {}


def stored_fingerprint(workdir: str) -> dict:
  """The fingerprint `workdir`'s record was made with; {} if there is none or it cannot
  be read."""
  text = stored_meta(workdir).get("fingerprint", "{}")  # (a WorkdirError is raised)
  try:
    return json.loads(text)
  except ValueError:
    return {}


def stored_config(workdir: str) -> dict:
  """The settings of the last run of `workdir`'s record (meta "config"); {} if there is
  none or it cannot be read."""
  try:
    return json.loads(stored_meta(workdir).get("config", "{}"))
  except ValueError:
    return {}


def unusable(path: str, e: sqlite3.DatabaseError) -> str:
  """One line on a record SQLite cannot use: damaged, or not writable where it must be."""
  why = (str(e).splitlines() or [type(e).__name__])[0]
  if "readonly" in why:
    return f"{path} cannot be written ({why}); make it and its folder writable"
  if "unable to open" in why:
    return (f"{path} cannot be opened ({why}); its folder must be readable, and writable "
            "where SQLite's -wal and -shm files are missing")
  return (f"{path} is not a readable metaqnn record ({why}); the work directory is damaged: "
          "restore it from a copy")


def _check_pages(db: sqlite3.Connection, path: str) -> None:
  """SQLite's own quick check of every page of the record (milliseconds for a search's):
  a damaged one is refused in one line before anything is read, or written to it."""
  result = db.execute("PRAGMA quick_check(1)").fetchone()[0]
  if result != "ok":
    why = [l for l in result.splitlines() if l.strip() and not l.startswith("***")]
    raise WorkdirError(f"{path} is damaged (SQLite's check: {(why or [result])[0].strip()}); "
                       "restore it from a copy (the work directory was left untouched)")


def meta_json(meta: dict, key: str, path: str):
  """A JSON value of the record's meta table; a damaged one is a WorkdirError."""
  try:
    return json.loads(meta[key])
  except ValueError:
    raise WorkdirError(f"{path}: its stored {key} is damaged (not JSON); restore the work "
                       "directory from a copy") from None


def open_existing(workdir: str) -> Store:
  """Opens a record for reading without a fingerprint check (inspection)."""
  path = os.path.join(workdir, DB_FILE)
  if not os.path.exists(path):
    raise WorkdirError(f"{workdir} holds no metaqnn search (no {DB_FILE})")
  store = Store.__new__(Store)
  store.path = path
  store._check_sqlite_header()
  with store._closed_on_failure():  # pylint: disable=protected-access
    store.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    _check_pages(store.db, path)
    if store.meta().get("format") != FORMAT:
      raise WorkdirError(f"{path} is not a {FORMAT} record")
  return store
