"""Archive-scale prediction: the single-scene ``predict`` of every task spread over a Dask cluster.

``predict_many(checkpoint, inputs, out, cluster=...)`` turns inputs (files, folders, globs, text lists,
local STAC catalogs) into scenes and runs each one on a Dask distributed worker through the task's own
:func:`rsvision.tasks.predict` (its atomic writes, its outputs), one folder per scene::

    out/
      batch.json                 what the run is (checkpoint, its sha256, task, options)
      <scene>/...                that scene's outputs, exactly what ``predict([scene], out/<scene>)`` writes
      <scene>/manifest.json      inputs, checkpoint sha256, rsvision version, status done | failed,
                                 reason, outputs, seconds, worker
      detections.parquet         detect: every scene's detections in one CRS (GeoParquet)
      Task1_<class>.txt          detect: the scenes' Task1 lines, scene after scene
      masks.vrt                  segment / change: mosaic of the masks (masks_<CRS>.vrt per CRS otherwise)
      predictions.json / .csv    classify: every image
      summary.json               this run: done / failed / skipped, failures with reasons, scenes per hour

Why a folder per scene: each scene is claimed, locked and written on its own (a worker never waits
for another's lock, names of two scenes never clash), and its manifest, written last, is the unit of
resume: a rerun skips the scenes whose manifest says done with the same checkpoint sha256, options
and inputs (and whose outputs still exist), and runs the rest, failed ones included. A killed run
loses only the scenes in flight; a scene that fails (unreadable, wrong bands, no usable pixel) is
recorded with its reason while the others go on.

Workers: ``cluster="local:N"`` starts a LocalCluster of N worker processes with one thread each and
torch / OpenMP threads = cores // N (N workers never oversubscribe the cores); ``"tcp://HOST:PORT"``
connects to a running scheduler (dask-jobqueue, Kubernetes, ``dask scheduler`` + ``dask worker``),
whose workers must see the checkpoint and the inputs at the same paths. Each worker process loads
the model once (:func:`worker_task`, keyed by the checkpoint's sha256) and keeps it for every scene.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rsvision.errors import CheckpointError, ConfigError, RSVisionError

__all__ = ["predict_many", "BatchResult", "Scene", "resolve_scenes", "worker_task", "run_scene", "parse_cluster",
           "file_sha256", "MANIFEST", "BATCH_FILE"]

MANIFEST = "manifest.json"
BATCH_FILE = "batch.json"
STAC_DIR = "_stac"  # VRTs of multi-asset STAC items
LIST_SUFFIXES = (".txt", ".lst")


@dataclass
class Scene:
    """One unit of work: ``id`` (its folder under ``out``), ``inputs`` (what ``predict`` receives)."""

    id: str
    inputs: list[str]
    stac: dict | None = None  # {"item", "assets", "bands", "source"} for STAC items


@dataclass
class BatchResult:
    """What :func:`predict_many` returns (and writes to ``summary.json``)."""

    out: Path
    task: str
    done: list[dict] = field(default_factory=list)  # manifests of the scenes done in this run
    skipped: list[dict] = field(default_factory=list)  # done by an earlier run, same checkpoint
    failed: list[dict] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)  # the merged results
    seconds: float = 0.0
    workers: int = 0

    @property
    def scenes_per_hour(self) -> float:
        return 3600.0 * len(self.done) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"task": self.task, "done": len(self.done), "skipped": len(self.skipped), "failed": len(self.failed),
                "failures": {m["scene"]: m["reason"] for m in self.failed}, "outputs": self.outputs,
                "seconds": round(self.seconds, 3), "workers": self.workers,
                "scenes_per_hour": round(self.scenes_per_hour, 2)}


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- inputs -> scenes --------------------------------------------------------------------------------
def _read_list(path: Path) -> list[str]:
    """A text list: one input per line (relative to the list's folder), ``#`` comments, blank lines skipped."""
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return [str(Path(ln) if Path(ln).is_absolute() else path.parent / ln) for ln in lines if ln]


def resolve_scenes(task_name: str, inputs: Sequence[str | Path], vrt_dir: str | Path,
                   assets: Sequence[str] | None = None, band_names: Sequence[str] | None = None) -> list[Scene]:
    """Inputs -> scenes with unique ids (:func:`rsvision.outputs.unique_stems`), checked before any work."""
    from rsvision.data.raster import expand_inputs
    from rsvision.data.stac import is_stac_file, item_scenes, read_items
    from rsvision.errors import DataError
    from rsvision.outputs import unique_stems

    flat: list[str] = []
    stac: list[Any] = []
    for x in inputs:
        p = Path(x)
        if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            listed = _read_list(p)
            if not listed:
                raise DataError("input list is empty", path=str(p))
            flat += listed
        elif is_stac_file(p):
            stac += item_scenes(read_items(p), vrt_dir, assets or band_names, source=str(p))
        else:
            flat.append(str(x))
    if assets and not stac:
        raise ConfigError("--assets chooses STAC assets, but no input is a STAC catalog / collection / item")
    scenes: list[tuple[list[str], str, Path, dict | None]] = []
    if task_name == "change":
        if stac:
            raise ConfigError("change predict takes pairs (A B files or folders); STAC items are single scenes")
        from rsvision.tasks.change import pairs_from_inputs

        scenes = [([str(a), str(b)], name or Path(b).stem, Path(b), None) for a, b, name in pairs_from_inputs(flat)]
    elif flat:
        scenes = [([str(f)], f.stem, f, None) for f in expand_inputs(flat)]
    scenes += [([str(s.path)], s.item_id, s.path, {"item": s.item_id, "assets": s.assets, "bands": s.bands,
                                                    "source": s.source}) for s in stac]
    if not scenes:
        raise DataError("no input scenes found", path=", ".join(map(str, inputs)))
    ids = unique_stems([p for _, _, p, _ in scenes], [n for _, n, _, _ in scenes])
    return [Scene(i, ins, st) for i, (ins, _, _, st) in zip(ids, scenes)]


# --- the worker side ------------------------------------------------------------------------------------
_TASKS: dict[tuple[str, str], Any] = {}  # (checkpoint sha256, device) -> loaded task, per worker process
_LOCK = threading.Lock()
KEEP_TASKS = 2
LOADS: dict[str, int] = {}  # checkpoint sha256 -> model loads in this process (one per worker, tests check)


def worker_task(checkpoint: str, sha256: str, device: str = "cpu", threads: int | None = None):
    """The task of ``checkpoint`` loaded once per process (the first scene pays, the others reuse it).

    The file is hashed here too: a worker that sees another file at that path (no shared filesystem)
    refuses it instead of predicting with other weights under this run's checkpoint hash."""
    key = (sha256, str(device))
    with _LOCK:
        if key not in _TASKS:
            if threads:
                from rsvision.tasks.common import set_threads

                set_threads(threads)
            if not Path(checkpoint).is_file():
                raise CheckpointError("checkpoint not found on this worker (workers need the same paths)",
                                      path=checkpoint)
            if file_sha256(checkpoint) != sha256:
                raise CheckpointError("checkpoint on this worker differs from the client's (sha256)", path=checkpoint)
            from rsvision.tasks.base import load_task

            while len(_TASKS) >= KEEP_TASKS:  # long-lived workers serve many runs: keep the newest few
                _TASKS.pop(next(iter(_TASKS)))
            _TASKS[key] = load_task(checkpoint, device)
            LOADS[sha256] = LOADS.get(sha256, 0) + 1
        return _TASKS[key]


def _relative(files: dict, out: Path) -> dict:
    rel = {}
    for k, v in files.items():
        try:
            rel[k] = str(Path(v).resolve().relative_to(out.resolve()))
        except ValueError:
            rel[k] = str(v)
    return rel


def run_scene(checkpoint: str, sha256: str, scene: Scene, out: str, options: dict, device: str = "cpu",
              threads: dict | int | None = None) -> dict:
    """Predict one scene into ``out/<scene.id>`` and write its manifest (last); never raises for the
    scene's own errors: they become ``status: failed`` with the reason."""
    import rsvision
    from rsvision.tasks.common import write_json

    t0 = time.time()
    folder = Path(out) / scene.id
    n_threads = _threads_here(threads)
    rec: dict[str, Any] = {"scene": scene.id, "inputs": scene.inputs, "checkpoint": str(checkpoint),
                           "checkpoint_sha256": sha256, "rsvision_version": rsvision.__version__,
                           "options": options, "status": "failed", "reason": None, "outputs": {},
                           "worker": {"host": socket.gethostname(), "pid": os.getpid(), "threads": n_threads}}
    if scene.stac:
        rec["stac"] = scene.stac
    try:
        task = worker_task(checkpoint, sha256, device, n_threads)
        from rsvision.tasks.base import predict

        results = list(predict(task, scene.inputs, folder, exist_ok=True, **options))
        files: dict[str, str] = {}
        for r in results:
            files.update(r.get("files", {}))
            if "counts" in r:
                rec["counts"] = r["counts"]
            if "fraction" in r:
                rec["fraction"] = r["fraction"]
            if "error" in r:
                raise RSVisionError(r["error"])
            if "detections" in r:
                from rsvision.geo.parquet import write_scene_parquet

                pq = write_scene_parquet(r["detections"], scene.id, folder / "detections.parquet")
                if pq is not None:
                    files["parquet"] = str(pq)
        for name in ("predictions.json", "predictions.csv"):
            if (folder / name).exists():
                files[Path(name).suffix[1:]] = str(folder / name)
        for t1 in sorted(folder.glob("Task1_*.txt")):
            files[t1.stem] = str(t1)
        rec.update(status="done", outputs=_relative(files, Path(out)))
    except Exception as exc:  # the scene fails alone, with its reason
        rec["reason"] = f"{type(exc).__name__}: {exc}"
    rec["seconds"] = round(time.time() - t0, 3)
    rec["worker"]["loads"] = LOADS.get(sha256, 0)
    write_json(rec, folder / MANIFEST)
    return rec


def _threads_here(threads: dict | int | None) -> int | None:
    if threads is None or isinstance(threads, int):
        return threads
    try:
        from distributed import get_worker

        return threads.get(get_worker().address.rsplit(":", 1)[0].split("//")[-1])
    except (ImportError, ValueError):
        return None


# --- the client side ------------------------------------------------------------------------------------
def parse_cluster(cluster: Any) -> tuple[str, Any]:
    """``None`` / ``"local"`` / ``"local:N"`` / ``"tcp://host:port"`` / a ``distributed.Client`` ->
    ``(kind, value)``; a clear :class:`ConfigError` for anything else."""
    if cluster is None or cluster == "local":
        return "local", min(4, os.cpu_count() or 1)
    if isinstance(cluster, str):
        if cluster.startswith("local:"):
            try:
                n = int(cluster.split(":", 1)[1])
            except ValueError:
                n = 0
            if n < 1:
                raise ConfigError(f"--cluster local:N needs N >= 1 workers, got {cluster!r}")
            return "local", n
        if "://" in cluster:
            return "address", cluster
        raise ConfigError(f"--cluster must be local, local:N or a scheduler address like tcp://HOST:8786, "
                          f"got {cluster!r}")
    if hasattr(cluster, "submit") and hasattr(cluster, "scheduler_info"):
        return "client", cluster
    raise ConfigError(f"cluster must be a string or a distributed.Client, got {type(cluster).__name__}")


def _client(cluster: Any, n_scenes: int):
    """``(client, own, threads)``: ``own`` tells whether to close it; ``threads`` the torch threads per worker."""
    from distributed import Client, LocalCluster

    kind, value = parse_cluster(cluster)
    if kind == "local":
        n = max(1, min(value, n_scenes))
        per = max(1, (os.cpu_count() or 1) // n)
        env = {v: str(per) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        lc = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, env=env,
                          silence_logs=logging.ERROR)
        return Client(lc), True, per
    if kind == "address":
        try:
            client = Client(value, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--cluster: cannot reach a Dask scheduler at {value}: {exc}") from exc
        return client, True, _threads_by_host(client)
    return value, False, _threads_by_host(value)


def _threads_by_host(client) -> dict:
    """Per worker host: its cores // the worker threads it runs (every scene's torch gets its share)."""
    info = _workers(client)
    cores = client.run(os.cpu_count)
    slots: dict[str, int] = {}
    cpus: dict[str, int] = {}
    for addr, w in info.items():
        host = addr.rsplit(":", 1)[0].split("//")[-1]
        slots[host] = slots.get(host, 0) + int(w.get("nthreads", 1))
        cpus[host] = int(cores.get(addr) or 1)
    return {h: max(1, cpus[h] // slots[h]) for h in slots}


def _workers(client) -> dict:
    """Every worker's info (recent ``distributed`` lists only 5 unless asked for all)."""
    import inspect

    if "n_workers" in inspect.signature(client.scheduler_info).parameters:
        return client.scheduler_info(n_workers=-1)["workers"]
    return client.scheduler_info()["workers"]


def _read_json(path: Path) -> dict | None:
    import json

    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def is_done(out: Path, scene: Scene, sha256: str, options: dict) -> dict | None:
    """The manifest of a scene an earlier run finished with the same checkpoint, options and inputs."""
    m = _read_json(out / scene.id / MANIFEST)
    if not m or m.get("status") != "done" or m.get("checkpoint_sha256") != sha256:
        return None
    if m.get("options") != options or m.get("inputs") != scene.inputs:
        return None
    if not all((out / p).exists() for p in m.get("outputs", {}).values()):
        return None
    return m


def predict_many(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path = "predictions",
                 cluster: Any = None, assets: Sequence[str] | None = None, crs: Any = None, device: str = "cpu",
                 progress: bool = False, exist_ok: bool = False, task: str | None = None,
                 **predict_kwargs: Any) -> BatchResult:
    """Predict ``inputs`` with ``checkpoint`` over a Dask cluster into ``out`` (module docstring).

    ``cluster``: ``None`` / ``"local"`` (min(4, cores) workers), ``"local:N"``, ``"tcp://HOST:PORT"`` or a
    ``distributed.Client``. ``assets``: STAC asset keys or band names. ``crs``: the CRS of the merged
    GeoParquet (default: the scenes' CRS when they share one, else EPSG:4326). ``predict_kwargs`` go to
    the task's ``predict`` on every scene (``score_thr``, ``window``, ``tta``, ...). ``out`` must be new,
    empty or an earlier batch run's folder (resumed), unless ``exist_ok``. ``task``: the task the
    checkpoint must be for (the CLI's group), checked before any work.
    """
    from rsvision.models.checkpoints import read_checkpoint
    from rsvision.outputs import claim_dir
    from rsvision.tasks.base import _task_of_hparams
    from rsvision.tasks.batch_merge import merge_results
    from rsvision.tasks.common import to_plain, write_json

    parse_cluster(cluster)  # a bad --cluster fails before anything is read
    ckpt = Path(checkpoint).resolve()
    hp = (read_checkpoint(ckpt) or {}).get("hyper_parameters") if ckpt.is_file() else None
    if not isinstance(hp, dict):
        raise CheckpointError("not an rsvision task checkpoint (no hyper_parameters)", path=str(checkpoint))
    task_name = str(_task_of_hparams(hp))
    if task is not None and task_name != task:
        raise ConfigError(f"{checkpoint} is a {task_name} checkpoint, not {task}")
    sha = file_sha256(ckpt)
    for k in ("progress", "exist_ok"):
        predict_kwargs.pop(k, None)  # workers draw no bars; scene folders are ours to rewrite
    _check_options(task_name, predict_kwargs)
    options = to_plain(predict_kwargs)
    out = Path(out)
    t0 = time.time()
    resume = (out / BATCH_FILE).is_file()
    with claim_dir(out, exist_ok=exist_ok or resume):
        band_names = hp.get("band_names") or [b for b in hp.get("bands") or [] if isinstance(b, str)] or None
        scenes = resolve_scenes(task_name, inputs, out / STAC_DIR, assets, band_names)
        write_json({"task": task_name, "checkpoint": str(ckpt), "checkpoint_sha256": sha, "options": options,
                    "scenes": [s.id for s in scenes]}, out / BATCH_FILE)
        res = BatchResult(out=out, task=task_name)
        todo = []
        for s in scenes:
            m = is_done(out, s, sha, options)
            (res.skipped.append(m) if m else todo.append(s))
        if todo:
            _run(todo, str(ckpt), sha, out, options, device, cluster, progress, res)
        res.seconds = time.time() - t0
        manifests = [_read_json(out / s.id / MANIFEST) or {} for s in scenes]
        res.outputs = merge_results(task_name, out, [m for m in manifests if m.get("status") == "done"], hp, crs)
        write_json(res.summary(), out / "summary.json")
    return res


def _check_options(task_name: str, options: dict) -> None:
    """Options the task's ``predict`` does not take fail here, not once per scene on the workers."""
    import inspect

    from rsvision.tasks.base import task_class

    params = inspect.signature(task_class(task_name).predict).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params) - {"self", "inputs", "out"})
    if unknown or {"inputs", "out"} & set(options):
        raise ConfigError(f"{task_name} predict takes no option(s) {', '.join(unknown or ['inputs', 'out'])}; "
                          f"it takes {', '.join(k for k in params if k not in ('self', 'inputs', 'out'))}")


def _run(todo: list[Scene], ckpt: str, sha: str, out: Path, options: dict, device: str, cluster: Any,
         show: bool, res: BatchResult) -> None:
    from distributed import wait

    client, own, threads = _client(cluster, len(todo))
    try:
        workers = _workers(client)
        res.workers = len(workers)
        slots = sum(int(w.get("nthreads", 1)) for w in workers.values())
        futs = {client.submit(run_scene, ckpt, sha, s, str(out.resolve()), options, device, threads, pure=False,
                              key=f"rsvision-scene-{s.id}-{time.time_ns()}"): s for s in todo}
        with _Display(show, len(todo), res) as display:
            pending = set(futs)
            while pending:
                try:
                    wait(list(pending), timeout=display.interval, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished within the interval: refresh the display
                    pass
                finished = {f for f in pending if f.done()}
                pending -= finished
                for f in finished:
                    rec = _outcome(f, futs[f], out, ckpt, sha, options)
                    (res.done if rec["status"] == "done" else res.failed).append(rec)
                display.update(min(slots, _running(client, pending)))
    finally:
        if own:
            cluster_obj = getattr(client, "cluster", None)
            client.close()
            if cluster_obj is not None:
                cluster_obj.close()


def _outcome(fut, scene: Scene, out: Path, ckpt: str, sha: str, options: dict) -> dict:
    """A finished future's manifest; a scene whose worker died (KilledWorker) gets its failed manifest here."""
    try:
        return fut.result()
    except Exception as exc:
        import rsvision
        from rsvision.tasks.common import write_json

        rec = {"scene": scene.id, "inputs": scene.inputs, "checkpoint": ckpt, "checkpoint_sha256": sha,
               "rsvision_version": rsvision.__version__, "options": options, "status": "failed",
               "reason": f"{type(exc).__name__}: {exc}", "outputs": {}, "seconds": None}
        write_json(rec, out / scene.id / MANIFEST)
        return rec


def _running(client, pending) -> int:
    try:
        keys = {f.key for f in pending}
        return sum(len(keys & set(v)) for v in client.processing().values())
    except Exception:  # the display only; a slow scheduler must not stop the run
        return 0


class _Display:
    """Scenes done / failed / running and throughput: a rich bar on a terminal, plain lines in logs."""

    def __init__(self, show: bool, total: int, res: BatchResult):
        self.show, self.total, self.res = show, total, res
        self.interval = 1.0 if show else 5.0
        self.t0 = time.time()
        self.bar = self.job = None

    def __enter__(self) -> "_Display":
        if self.show:
            from rsvision.progress import progress

            self.bar = progress()
            self.bar.start()
            self.job = self.bar.add_task(self._text(0), total=self.total)
        return self

    def _text(self, running: int) -> str:
        done, failed = len(self.res.done), len(self.res.failed)
        rate = 3600.0 * done / max(time.time() - self.t0, 1e-9)
        return f"scenes: {done} done, {failed} failed, {running} running, {rate:.0f} scenes/h"

    def update(self, running: int) -> None:
        if self.bar is not None:
            self.bar.update(self.job, completed=len(self.res.done) + len(self.res.failed),
                            description=self._text(running))

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
