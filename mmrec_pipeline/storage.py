"""The lake (`Lake`: where every table and artifact lives) and atomic writes.

The root is `$MMREC_HOME` (default `./.mmrec`): a local folder or any fsspec URL (`s3://bucket/prefix`,
`gs://…`, `memory://…`). Local paths are `pathlib.Path`; remote ones `upath.UPath`, so the same code reads and
writes both (`Path(<remote path>)` raises instead of writing to a local folder by mistake).

Atomicity: locally every file is written to a temporary file in the same folder and renamed into place, so a
crash never leaves a half-written file behind (a temp left by a killed process, `.<name>.<pid>.<random>.tmp`, is
removed at the next write of the same file). On object storage a file is written to a local temp file and
uploaded in one PUT (multipart for large files): the object appears whole or not at all. What object storage
does not give: a group of files (a checkpoint's config + weights) is not replaced at once, and there are no
locks (`exclusive` and the feature cache's locks do nothing there; see features/cache.py).

Integrity: files are written with their sha256 (`write_safetensors` returns it), which the writer records (the
weights' in a checkpoint's `config.json`, a feature-cache part's in its name) and the reader checks
(`read_safetensors`); a file whose bytes do not match, or that cannot be parsed, raises `CorruptFileError` naming
it, and `quarantine` moves it aside, to be recomputed, or to be remade by the asset the error names.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import polars as pl
from upath import UPath

from mmrec_pipeline.locks import file_lock

LOCAL_PROTOCOLS = ("", "file", "local")
CATALOG = "lake.duckdb"  # the DuckDB catalog at a local lake's root (mmrec_pipeline/lake.py)
# Object stores whose fsspec filesystems cache directory listings per process: off, so a long-lived process (the
# sensor, a worker) sees what other processes wrote.
LISTING_CACHED = ("s3", "s3a", "gs", "gcs", "abfs", "az")


def to_path(path: str | os.PathLike) -> Path | UPath:
    """A local folder or file as a resolved `Path`; a URL (`s3://…`) as a `UPath`."""
    if isinstance(path, Path):
        return path.expanduser().resolve()
    upath = path if isinstance(path, UPath) else UPath(str(path))
    if upath.protocol in LOCAL_PROTOCOLS:
        return Path(upath.path).expanduser().resolve()
    if not isinstance(path, UPath) and upath.protocol in LISTING_CACHED:
        return UPath(str(path), use_listings_cache=False)
    return upath


def is_local(path) -> bool:
    return isinstance(path, Path)


def inside(root: Path | UPath, *parts: str) -> Path | UPath:
    """`root/parts…`, refusing any path that escapes `root` (e.g. a dataset named '../x')."""
    root = to_path(root)
    if any(str(p).startswith("/") for p in parts) and not is_local(root):
        raise ValueError(f"path {root.joinpath(*parts)} would leave the lake root {root}")
    return ensure_inside(root, root.joinpath(*parts))


def ensure_inside(root: Path | UPath, path: Path | UPath) -> Path | UPath:
    """`path` (resolved, when local) if it lies under `root`, else a ValueError: the one lake-root guard."""
    root = to_path(root)
    if is_local(root):
        path = Path(to_path(path)).resolve()
        if path != root and root not in path.parents:
            raise ValueError(f"path {path} would leave the lake root {root}")
        return path
    base, joined = posixpath.normpath(root.path), posixpath.normpath(path.path)
    if joined != base and not joined.startswith(base.rstrip("/") + "/"):
        raise ValueError(f"path {path} would leave the lake root {root}")
    return path


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint folder and the names of its files: `config.json` (plain fields plus `weights_sha256`) and
    `model.safetensors`, and beside them what was learned while fitting (`fit_report.json`; the VQ-VAE's
    `report.json`) and what its report section reads (`report_facts.json`). `write` / `read` are the one
    checkpoint format (models and the VQ-VAE alike): safetensors + JSON, the weights' sha256 checked on read."""

    path: Path | UPath

    CONFIG: ClassVar[str] = "config.json"
    WEIGHTS: ClassVar[str] = "model.safetensors"

    def __post_init__(self):
        object.__setattr__(self, "path", to_path(self.path))

    @property
    def config(self) -> Path | UPath:
        return inside(self.path, self.CONFIG)

    @property
    def weights(self) -> Path | UPath:
        return inside(self.path, self.WEIGHTS)

    @property
    def fit_report(self) -> Path | UPath:
        """What retraining on every interaction needs (the epoch count chosen on validation)."""
        return inside(self.path, "fit_report.json")

    @property
    def training_report(self) -> Path | UPath:
        """The VQ-VAE's training report (reconstruction quality, loss curve)."""
        return inside(self.path, "report.json")

    @property
    def booster(self) -> Path | UPath:
        """The two-stage ranker's booster, in LightGBM's own text model format (never pickle); its `config.json`
        holds the booster's sha256."""
        return inside(self.path, "lightgbm.txt")

    @property
    def report_facts(self) -> Path | UPath:
        """What the variant's report section reads (so the report never loads a checkpoint)."""
        return inside(self.path, "report_facts.json")

    def exists(self) -> bool:
        """Both files are there (the config is written last, so it marks a checkpoint written whole)."""
        return self.config.exists() and self.weights.exists()

    def write(self, state: dict, meta: dict) -> Path | UPath:
        """The tensors as safetensors, then `meta` (+ `weights_sha256`) as the config; each atomically."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        digest = write_safetensors(state, self.weights)
        write_json({**meta, "weights_sha256": digest}, self.config)
        return self.path

    def read_config(self) -> dict:
        """The config's fields (`weights_sha256` included); `CorruptFileError` when it is not JSON."""
        return read_json_file(self.config)

    def read_weights(self, config: dict) -> dict:
        """The tensors, checked against the sha256 its `config` recorded when they were written (a checkpoint from
        before hashes were recorded is only parsed). Raises `CorruptFileError` naming the file."""
        return read_safetensors(self.weights, config.get("weights_sha256"))

    def read(self) -> tuple[dict, dict]:
        """(config fields, tensors): `read_config` then `read_weights`."""
        config = self.read_config()
        return config, self.read_weights(config)


@dataclass(frozen=True)
class ModelFolder:
    """One model's folder of checkpoints, `<dataset>/models/<model>/`: a checkpoint folder per variant, and
    beside each checkpoint the facts its report section reads."""

    path: Path | UPath

    def __post_init__(self):
        object.__setattr__(self, "path", to_path(self.path))

    def variant(self, variant: str) -> Path | UPath:
        """The variant's checkpoint folder (`Recommender.save` writes it; `Checkpoint` names its files)."""
        return inside(self.path, variant)

    def checkpoint(self, variant: str) -> Checkpoint:
        return Checkpoint(self.variant(variant))

    def report_facts(self, variant: str) -> Path | UPath:
        """What the variant's report section reads (so the report never loads a checkpoint)."""
        return self.checkpoint(variant).report_facts

    def configs(self) -> dict[str, Path | UPath]:
        """{variant: its checkpoint's config.json} (what checks and report sections read, never the weights)."""
        if not self.path.exists():
            return {}
        return {c.parent.name: c for c in sorted(self.path.glob(f"*/{Checkpoint.CONFIG}"))}

    @property
    def summary(self) -> Path | UPath:
        """A model's summary over its variants (the two-stage ranker's `summary.json`)."""
        return inside(self.path, "summary.json")


@dataclass(frozen=True)
class DatasetView:
    """One dataset's artifacts in the lake, by name: the only place their paths under `<root>/<dataset>/` are
    spelled (the layout stays as it always was, so existing lakes keep working)."""

    root: Path | UPath  # the lake root
    name: str  # the dataset

    @classmethod
    def at(cls, folder: str | os.PathLike | DatasetView) -> DatasetView:
        """The view of a dataset folder given as a path (`<root>/<dataset>`); a view is returned as is."""
        if isinstance(folder, DatasetView):
            return folder
        folder = to_path(folder)
        return cls(folder.parent, folder.name)

    def _path(self, *parts: str) -> Path | UPath:
        return inside(self.root, self.name, *parts)

    @property
    def folder(self) -> Path | UPath:
        return self._path()

    def table(self, table: str) -> Path | UPath:
        return self._path(f"{table}.parquet")

    def models(self, *parts: str) -> Path | UPath:
        """`models/[<model>/[<variant>]]`: checkpoints."""
        return self._path("models", *parts)

    def model(self, model: str) -> ModelFolder:
        return ModelFolder(self.models(model))

    def report_facts(self, model: str, variant: str) -> Path | UPath:
        return self.model(model).report_facts(variant)

    def checkpoint_configs(self, model: str) -> dict[str, Path | UPath]:
        return self.model(model).configs()

    @property
    def vq_vae(self) -> Path | UPath:
        """The dataset's VQ-VAE image tokenizer (its checkpoint folder)."""
        return self.models("vq_vae")

    @property
    def vq_vae_report(self) -> Path | UPath:
        return Checkpoint(self.vq_vae).training_report

    @property
    def ranker_summary(self) -> Path | UPath:
        return self.model("ranker").summary

    @property
    def per_user_dir(self) -> Path | UPath:
        return self._path("per_user")

    def per_user(self, model: str) -> Path | UPath:
        """A model's per-user metrics table (the significance tests read it)."""
        return self._path("per_user", f"{model}.parquet")

    @property
    def previous_recommendations(self) -> Path | UPath:
        return self._path("serving", "recommendations.previous.parquet")

    @property
    def drift_log(self) -> Path | UPath:
        return self._path("serving", "drift.json")

    @property
    def report(self) -> Path | UPath:
        return self._path("report.html")

    @property
    def feature_dtype(self) -> Path | UPath:
        """The dtype the dataset's features are computed in, pinned at first use (`compute.pin_feature_dtype`)."""
        return self._path("feature_dtype.json")


@dataclass(frozen=True)
class FeatureCacheFolder:
    """`<root>/_cache/features`: the content-addressed feature stores every dataset shares (features/cache.py keeps
    the inside of each store), and where weights converted for them are kept (`converted_weights`). Code that
    computes features is handed this object, never a path it would find the lake from."""

    lake: Lake

    @property
    def path(self) -> Path | UPath:
        return inside(self.lake.root, "_cache", "features")

    def store(self, family: str, model_key: str) -> Path | UPath:
        """One store: the rows one model (its key: weights, preprocessing, prompt) computed for one family."""
        return inside(self.path, family, model_key)

    def converted_weights(self, *parts: str) -> Path:
        """Weights converted for local use (the GGUF summarizer re-saved as safetensors): `Lake.model_cache`."""
        return self.lake.model_cache(*parts)


class Lake:
    """The one owner of where things live. `<root>/<dataset>/` holds the tables (`<table>.parquet`),
    `models/<model>/<variant>/` (checkpoints), `per_user/`, `serving/` and `report.html`; `<root>/_cache/features`
    the feature caches every dataset shares."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = to_path(root or os.environ.get("MMREC_HOME") or "./.mmrec")

    def __repr__(self) -> str:
        return f"Lake({str(self.root)!r})"

    @property
    def local(self) -> bool:
        return is_local(self.root)

    def dataset(self, name: str) -> Path | UPath:
        return inside(self.root, name)

    def dagster_home(self, env: str) -> Path:
        """The default Dagster instance folder of a local lake (`dagster`, or `dagster-<env>` for a PostgreSQL
        environment, passed as `env`; "" for the default)."""
        return inside(self.root, f"dagster-{env}" if env else "dagster")

    @property
    def catalog(self) -> Path | UPath:
        return inside(self.root, CATALOG)

    def dataset_view(self, name: str) -> DatasetView:
        """The dataset's artifacts by name (`DatasetView`)."""
        inside(self.root, name)  # a name like '../x' fails here, not at first use
        return DatasetView(self.root, name)

    def model_cache(self, *parts: str) -> Path:
        """Converted model weights (e.g. the GGUF summarizer re-saved as safetensors): beside the features in a local
        lake; in the machine's cache when the lake is remote (transformers loads them from a folder)."""
        return inside(self.machine_cache(), "models", *parts)

    def table(self, dataset: str, table: str) -> Path | UPath:
        return self.dataset_view(dataset).table(table)

    def models(self, dataset: str, *parts: str) -> Path | UPath:
        """`<dataset>/models/[<model>/[<variant>]]`: checkpoints (and the VQ-VAE at `models/vq_vae`)."""
        return self.dataset_view(dataset).models(*parts)

    def per_user(self, dataset: str) -> Path | UPath:
        return self.dataset_view(dataset).per_user_dir

    def serving(self, dataset: str) -> Path | UPath:
        return inside(self.root, dataset, "serving")

    def report(self, dataset: str) -> Path | UPath:
        return self.dataset_view(dataset).report

    def feature_dtype(self, dataset: str) -> Path | UPath:
        """`<dataset>/feature_dtype.json`: the dtype the dataset's features are computed in, pinned at first use
        (`compute.pin_feature_dtype`), so every machine and worker computes (and reuses) the same ones."""
        return self.dataset_view(dataset).feature_dtype

    def feature_cache(self) -> FeatureCacheFolder:
        """`<root>/_cache/features`: outside every dataset folder, so datasets share it."""
        return FeatureCacheFolder(self)

    def machine_cache(self) -> Path:
        """Files each machine may rebuild on its own (converted model weights, the generated sample's raw store):
        inside a local lake; under the system temp folder when the lake is remote (one folder per lake)."""
        if self.local:
            return self.root / "_cache"
        key = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"mmrec-{key}"

    def sample_raw(self, dataset: str) -> Path:
        """The generated `sample` store (it stands in for an upstream system; readers open its images by path)."""
        return inside(self.root, dataset, "raw") if self.local else inside(self.machine_cache(), dataset, "raw")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temps(path: Path) -> list[Path]:
    """Remove the temp files (or folders) of `path` whose writer process is gone; a live writer's is left alone.

    Ours are `.<name>.<pid>.<random>.tmp` (mkstemp's random part has no dot); `.<name>.<random>.tmp` predates
    the pid and is always stale. Anything else (the temp of `<name>.index.json`) belongs to another file.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:-len(".tmp")].split(".")
        if len(parts) > 2 or (len(parts) == 2 and not parts[0].isdigit()):
            continue
        if len(parts) == 2 and pid_alive(int(parts[0])):
            continue
        if tmp.is_dir():  # a model folder written whole, then renamed (the converted summarizer)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def exclusive(path: Path | UPath, on_wait: Callable[[], None] | None = None):
    """Exclusive use of `path` (a file or folder to check and write) between processes on this machine, or a
    shared POSIX file system: a `file_lock` on `.<name>.lock` beside it. Nothing on object storage (no locks
    there; writes stay atomic, so racing writers only repeat work)."""
    path = to_path(path)
    if not is_local(path):
        return contextlib.nullcontext()
    path.parent.mkdir(parents=True, exist_ok=True)
    return file_lock(path.with_name(f".{path.name}.lock"), on_wait)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path | UPath, write: Callable[[Path], None]) -> Path | UPath:
    """Call `write(tmp)` on a local temp file, then put it at `path`: a rename beside it locally, one upload
    (atomic per object) on object storage.

    The file gets the permissions of any new file (0666 minus the umask), not mkstemp's private 0600, so a
    shared lake stays readable to the group the umask allows.
    """
    path = to_path(path)
    if not is_local(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        try:
            write(Path(tmp))
            path.fs.put_file(tmp, path.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_parquet(path: Path | UPath, columns: list[str] | None = None) -> pl.DataFrame:
    path = to_path(path)
    if is_local(path):
        return pl.read_parquet(path, columns=columns)
    with path.open("rb") as f:
        return pl.read_parquet(f, columns=columns)


def scan_parquet(path: Path | UPath, columns: list[str] | None = None) -> pl.LazyFrame:
    """`read_parquet` deferred: nothing is read until the frame is collected, so a caller that turns the table into
    something else (`RecDataset`) holds the rows only while it does."""
    path = to_path(path)
    if not is_local(path):
        return read_parquet(path, columns).lazy()
    frame = pl.scan_parquet(path)
    return frame.select(columns) if columns is not None else frame


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    return atomic_write(path, lambda tmp: df.write_parquet(tmp, compression="zstd"))


def write_json(obj, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str)))


def write_text(text: str, path: Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


class CorruptFileError(RuntimeError):
    """A file whose bytes differ from the hash recorded when it was written, or that cannot be parsed; `path`
    names it."""

    def __init__(self, path, problem: str):
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")

    def moved_aside(self, redo: str, log=None) -> CorruptFileError:
        """For a file nothing here can recompute: move it aside (`quarantine`) and return the error to raise,
        which says where it went and `redo`, what the user does to make it again."""
        aside = quarantine(self.path, str(self), redo, log)
        return CorruptFileError(self.path, f"{self.problem}; moved aside to {aside}; {redo}")


def sha256_file(path: Path | UPath) -> str:
    """sha256 of a file's bytes, read in blocks (a model's weights need not fit in memory twice)."""
    with to_path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_safetensors(state: dict, path: Path | UPath) -> str:
    """Write tensors atomically as safetensors; returns the file's sha256 for the caller to record."""
    from safetensors.torch import save_file

    digest = []

    def write(tmp: Path) -> None:
        save_file(state, str(tmp))
        digest.append(sha256_file(tmp))  # just written: read back from the page cache

    atomic_write(path, write)
    return digest[0]


def read_safetensors(path: Path | UPath, sha256: str | None = None) -> dict:
    """The tensors of a safetensors file, checked against the `sha256` recorded when it was written (None: a file
    written before hashes were recorded, only parsed). Raises `CorruptFileError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    path = to_path(path)
    try:
        if is_local(path):
            # Hashing reads the file once; load_file then maps it from the page cache.
            actual = sha256_file(path) if sha256 else None
        else:
            data = path.read_bytes()
            actual = hashlib.sha256(data).hexdigest() if sha256 else None
        if actual != sha256:
            raise CorruptFileError(path, f"sha256 {actual} differs from the {sha256} recorded when it was written")
        return load_file(str(path)) if is_local(path) else load(data)
    except SafetensorError as e:
        raise CorruptFileError(path, f"not a readable safetensors file ({e})") from e


def read_json_file(path: Path | UPath) -> dict:
    """A JSON file's object; a file that is not valid JSON raises `CorruptFileError` naming it."""
    path = to_path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"not valid JSON ({e})") from e


def quarantine(path: Path | UPath, error: str, then: str = "", log=None) -> Path | UPath:
    """Move a corrupt file or folder aside as `<name>.corrupt-<UTC time>-<random>` (kept for inspection; no reader
    looks for that name) and warn: `error` (which names the file), where it went, and `then` (what happens next).
    Returns where it went; a file another process moved first is left alone."""
    path = to_path(path)
    # The random part: two corrupt copies moved aside in the same second must not replace one another.
    stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        if is_local(path):
            os.replace(path, aside)
        else:
            path.fs.mv(path.path, aside.path, recursive=True)
    except FileNotFoundError:
        return aside
    message = f"{error}; moved aside to {aside}" + (f"; {then}" if then else "")
    (log or logging.getLogger("mmrec_pipeline")).warning(message)
    return aside
