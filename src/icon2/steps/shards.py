"""Resumable generation: a long stage's work in shards, each kept as soon as it is done.

A generation stage that dies after hours (kill -9, a lost node, an out-of-memory kill) must
not start again from zero. Its rows are cut into shards of ``shard_size`` in row order;
the generations of each shard are written atomically to ``<dir>/shard-<k>.json`` the moment
the shard completes, beside ``manifest.json``, which holds the run's key: the SHA-256 of the
stage's provenance record (its params, the precisions ``auto`` resolved to, its inputs' and
model's hashes), the row count and the shard size. Rerun with the same key, the stage reads
the complete shards and generates only the others. The outputs equal an uninterrupted
run's because a shard's work depends only on its own rows and its index: shard ``k``
samples with seed ``seed + k × SEED_STRIDE`` (shard 0 keeps the seed, so a job of one
shard decodes exactly as without shards). A directory whose key differs — other params,
inputs, model or precision — is refused with one error and never mixed in. The stage
removes the directory once its outputs are written.

Each shard file also keeps what the shard cost (wall seconds, tokens generated and read), so
a resumed stage's cost record counts the finished shards' work, not only the part it redid.
The work a kill interrupted inside a shard is lost and not counted.

Under ``accelerate launch`` (``base.generation_accelerate_config``) the same shards spread
over the processes: process r generates the unfinished shards whose index is r modulo N
into the shared directory, all wait for each other, and every process then reads the whole
job back from it. The bytes equal one process's, since no shard's work depends on which
process did it (the directory must be shared by all: one machine, or a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icon2.core.cost import Meter
from icon2.core.errors import InputError
from icon2.core.io import sha256_json, write_json
from icon2.core.processes import process_state
from icon2.engines.base import Generation, Sampling

#: Seed offset between shards: above any batch or request count inside one shard, so two
#: shards never share a batch's or a request's seed.
SEED_STRIDE = 1_000_003
MANIFEST = "manifest.json"
_VERSION = 1


@dataclass(frozen=True)
class Shard:
    index: int
    start: int  # first row (inclusive)
    stop: int  # last row (exclusive)

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_shards(rows: int, size: int) -> list[Shard]:
    """Consecutive shards of ``size`` rows (the last one shorter) covering ``rows`` rows."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1 (got {size})")
    return [
        Shard(k, start, min(start + size, rows)) for k, start in enumerate(range(0, rows, size))
    ]


def shard_sampling(sampling: Sampling, shard: Shard) -> Sampling:
    """The shard's decoding settings: its own seed, the rest unchanged."""
    return dataclasses.replace(sampling, seed=sampling.seed + shard.index * SEED_STRIDE)


#: Settings applied after generation (synthesize's cleaning): not part of a shard's key, so
#: a rerun with other cleaning rules still resumes the samples.
AFTER_GENERATION = {
    "synthesize": ("min_chars", "max_chars", "near_dup_threshold", "near_dup_exact_max")
}


def code_fingerprint() -> dict[str, str]:
    """The SHA-256 of icon2's own source files and the versions of the libraries that
    decode: shards of other code are never mixed in."""
    import hashlib
    import importlib.metadata

    import icon2

    root = Path(icon2.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    found = {"icon2_sources": h.hexdigest()}
    for lib in ("torch", "transformers", "vllm"):
        try:
            found[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            found[lib] = "-"
    return found


def shard_key(record: dict[str, Any], stage: str) -> dict[str, Any]:
    """What a stage's shards depend on: its provenance record (params, precisions, input and
    weight hashes) less the settings applied after generation, plus :func:`code_fingerprint`."""
    params = dict(record.get("params", {}))
    section = params.get(stage)
    if isinstance(section, dict):
        params[stage] = {
            k: v for k, v in section.items() if k not in AFTER_GENERATION.get(stage, ())
        }
    return {**record, "params": params, "code": code_fingerprint()}


def shard_dir_for(out: Path) -> Path:
    """Where the stage writing ``out`` keeps its shards: ``<out's folder>/.shards/<out's stem>``."""
    return out.parent / ".shards" / out.stem


class ShardStore:
    """The shard directory of one run (see the module docstring).

    Args:
        path: the directory (created if missing).
        key: what the run's outputs depend on (e.g. the provenance record), as JSON.
        rows: the rows the run generates for.
        size: rows per shard.
    """

    def __init__(self, path: Path, key: dict[str, Any], *, rows: int, size: int) -> None:
        self.path = path
        self.manifest: dict[str, Any] = {
            "version": _VERSION,
            "key": sha256_json(key),
            "rows": rows,
            "shard_size": size,
        }

    def check(self) -> int:
        """Check, without creating anything, that the directory (if any) belongs to this run.

        Returns:
            the number of complete shards found (0 when there is no directory yet).

        Raises:
            InputError: the directory holds shards of another run (other params, inputs,
                model or precision), or files this store did not write.
        """
        manifest = self.path / MANIFEST
        if not self.path.exists():
            return 0
        if not manifest.is_file():
            # A killed first write of the manifest leaves only its hidden temporary.
            if any(not p.name.startswith(".") for p in self.path.iterdir()):
                raise InputError(
                    f"{self.path}: a shard directory without {MANIFEST}; it is not this "
                    f"stage's: move it away, then rerun"
                )
            return 0
        found = _read_manifest(manifest)
        if found != self.manifest:
            raise InputError(
                f"{self.path}: shards of another run (its params, inputs, model or "
                f"precision differ: key {str(found.get('key'))[:12]}, rows "
                f"{found.get('rows')}, shard_size {found.get('shard_size')}; this run: "
                f"key {str(self.manifest['key'])[:12]}, rows {self.manifest['rows']}, "
                f"shard_size {self.manifest['shard_size']}); they are never mixed in: "
                f"restore those settings to resume, or remove {self.path} to start over"
            )
        return sum(1 for _ in self.path.glob("shard-*.json"))

    def open(self) -> int:
        """:meth:`check`, then create the directory and its manifest if missing.

        Returns:
            the number of complete shards found.
        """
        found = self.check()
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / MANIFEST).is_file():
            write_json(self.path / MANIFEST, self.manifest)
        return found

    def _file(self, shard: Shard) -> Path:
        return self.path / f"shard-{shard.index:06d}.json"

    def has(self, shard: Shard) -> bool:
        return self._file(shard).is_file()

    def load(self, shard: Shard) -> tuple[list[Generation], dict[str, float]] | None:
        """A complete shard's generations and cost, or None when it was never finished."""
        path = self._file(shard)
        if not path.is_file():
            return None
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            gens = [Generation(**g) for g in obj["generations"]]
            cost = {k: obj["cost"][k] for k in ("wall_seconds", "tokens_generated", "tokens_read")}
            ok = (obj["index"], obj["start"], obj["stop"]) == (
                shard.index,
                shard.start,
                shard.stop,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a readable shard ({exc}); remove it to redo it") from exc
        if not ok:
            raise InputError(f"{path}: holds rows other than {shard.start}..{shard.stop - 1}")
        return gens, cost

    def save(self, shard: Shard, gens: Sequence[Generation], cost: dict[str, float]) -> None:
        """Write a finished shard (atomically: a reader sees all of it or nothing)."""
        write_json(
            self._file(shard),
            {
                "index": shard.index,
                "start": shard.start,
                "stop": shard.stop,
                "cost": cost,
                "generations": [dataclasses.asdict(g) for g in gens],
            },
        )

    def remove(self) -> None:
        """Delete the files this store wrote, then the directory (and ``.shards`` if empty)."""
        for path in [*self.path.glob("shard-*.json"), self.path / MANIFEST]:
            path.unlink(missing_ok=True)
        for folder in (self.path, self.path.parent):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _cost(meter: Meter | None) -> dict[str, float]:
    if meter is None:
        return {"wall_seconds": 0.0, "tokens_generated": 0, "tokens_read": 0}
    return {
        "wall_seconds": meter.wall_seconds,
        "tokens_generated": meter.tokens_generated,
        "tokens_read": meter.tokens_read,
    }


def _add(meter: Meter | None, cost: dict[str, float]) -> None:
    if meter is not None:
        meter.wall_seconds += cost["wall_seconds"]
        meter.tokens_generated += int(cost["tokens_generated"])
        meter.tokens_read += int(cost["tokens_read"])


def _wait_for(ready: Callable[[], bool], what: str, timeout: float = 7 * 24 * 3600) -> None:
    """Poll the shared folder (no process-group barrier: an uneven share of shards can keep
    the other processes waiting longer than a GPU collective's timeout)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise InputError(f"gave up waiting for {what}")
        time.sleep(1.0)


def run_shards(
    shards: Sequence[Shard],
    work: Callable[[Shard], list[Generation]],
    *,
    store: ShardStore | None,
    meter: Meter | None = None,
    per_row: int = 1,
    desc: str = "shards",
) -> list[list[Generation]] | None:
    """``work`` for every shard, in order; complete shards in ``store`` are read, not redone.

    ``work`` returns ``per_row`` generations per row of its shard. ``meter`` is the meter
    ``work``'s backend adds to: each shard's share is saved with it, and a read shard's
    share is added back, so the meter ends with the whole job's cost (with several
    processes: every process's). With ``store`` None every shard is worked and nothing is
    kept (one process only).

    Returns:
        Every shard's generations, in order; None on a process other than the main one,
        once its own shards are saved (the main process waits for them in the folder).
    """
    state = process_state()
    rank, world = state.process_index, state.num_processes
    if store is None and world > 1:
        raise ValueError(f"{desc}: {world} processes need a shard store to meet in")
    if store is not None:
        # The main process creates (or checks) the folder; the others wait for its manifest
        # and then only check it, so no process can find it half-made.
        if state.is_main_process:
            if store.open():
                found = sum(store.has(s) for s in shards)
                print(f"{desc}: resuming from {store.path}: {found} of {len(shards)} shards "
                      f"done", file=sys.stderr, flush=True)  # fmt: skip
        else:
            _wait_for(lambda: (store.path / MANIFEST).is_file(), f"{store.path}/{MANIFEST}")
            store.check()
    # A shard finished by another process meanwhile is never this one's: `index % world`.
    mine = [s.index for s in shards if s.index % world == rank and not (store and store.has(s))]
    done: dict[int, list[Generation]] = {}
    started = time.perf_counter()
    for shard in shards:
        if shard.index not in mine:
            continue
        before = _cost(meter)
        gens = work(shard)
        if len(gens) != shard.rows * per_row:  # never saved: a bad shard is not kept
            raise RuntimeError(
                f"{desc}: shard {shard.index} made {len(gens)} generations, expected "
                f"{shard.rows * per_row}"
            )
        if store is not None:
            after = _cost(meter)
            store.save(shard, gens, {k: after[k] - before[k] for k in after})
        done[shard.index] = gens
        worked = mine.index(shard.index) + 1
        if len(shards) > 1:
            eta = (time.perf_counter() - started) / worked * (len(mine) - worked)
            print(f"{desc}: shard {shard.index + 1}/{len(shards)} done"
                  f"{f' (process {rank} of {world})' if world > 1 else ''}, "
                  f"{len(mine) - worked} to go, ~{eta / 60:.1f} min left",
                  file=sys.stderr, flush=True)  # fmt: skip
    if not state.is_main_process:
        return None
    if store is not None and world > 1:
        _wait_for(lambda: all(store.has(s) for s in shards), f"every shard in {store.path}")
    out: list[list[Generation]] = []
    for shard in shards:
        if shard.index in done:
            gens = done[shard.index]
        else:
            assert store is not None  # only a stored shard can be missing from `done`
            kept = store.load(shard)
            if kept is None:
                raise InputError(f"{desc}: shard {shard.index} is missing from {store.path}")
            gens, cost = kept
            _add(meter, cost)
        if len(gens) != shard.rows * per_row:
            raise InputError(
                f"{desc}: shard {shard.index} in {store.path if store else '-'} holds "
                f"{len(gens)} generations, expected {shard.rows * per_row}; remove it to "
                f"redo it"
            )
        out.append(gens)
    return out
