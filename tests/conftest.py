"""Test environment: the shared real data beside the repo, a throw-away lake, the `test` resources."""

import atexit
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
_LAKE = Path(tempfile.mkdtemp(prefix="mmrec-test-lake-"))  # one per process: each xdist worker has its own
# ...but the fixtures that compute the sample's features share one feature cache across workers: it is
# content-addressed and safe under concurrent writers (features/cache.py), so a worker reuses what the other has
# computed. The controller creates it; the workers it spawns inherit the variable. (Not a link inside the lakes:
# the lake refuses paths that resolve outside its root.)
_OWNS_SHARED_CACHE = "MMREC_TEST_SHARED_CACHE" not in os.environ  # the controller; its workers inherit the path
if _OWNS_SHARED_CACHE:
    os.environ["MMREC_TEST_SHARED_CACHE"] = tempfile.mkdtemp(prefix="mmrec-test-cache-")
_SHARED_CACHE = Path(os.environ["MMREC_TEST_SHARED_CACHE"])
# A test run leaves nothing in the temp folder: each process removes its lake, the controller the shared cache.
atexit.register(shutil.rmtree, _LAKE, ignore_errors=True)
if _OWNS_SHARED_CACHE:
    atexit.register(shutil.rmtree, _SHARED_CACHE, ignore_errors=True)
# The files that run longest (minutes on a 2-core CPU) start first, then the other files that read the sample's
# features (test_lvlm_retrieval, first on its worker, has put them in the shared cache by the time either worker
# takes one; started side by side both workers computed them: 626 s of a 17-minute run), then the short files,
# which fill the end so the two workers finish together. test_features converts SmolLM2 (link_converted_summarizer)
# well before test_object_storage needs it (in the other order the S3 test waited 19 s for the conversion).
LONG_FIRST = ("test_lvlm_retrieval", "test_bad_input", "test_features", "test_sequential", "test_object_storage",
              "test_deploy", "test_mm_llmrec", "test_model_registry")

os.environ.setdefault("MMREC_DATA", str(SHARED_DATA))
os.environ["MMREC_HOME"] = str(_LAKE)
os.environ["DAGSTER_HOME"] = str(_LAKE / "dagster")
os.environ["MMREC_ENV"] = "test"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "PYTEST_XDIST_WORKER" in os.environ:  # `make test` runs 2 workers (pyproject addopts): one core each
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported; the runs started as subprocesses inherit it


def pytest_collection_modifyitems(items):
    """`--dist loadfile` (pyproject addopts) keeps each file on one worker, so its module fixtures are built
    once; the files that run longest start first (LONG_FIRST)."""
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__, len(LONG_FIRST)))


@pytest.fixture(scope="session")
def lake() -> Path:
    return _LAKE


@pytest.fixture(scope="session")
def shared_feature_cache():
    """The feature cache (a `FeatureCacheFolder`) the sample's feature fixtures share across xdist workers."""
    from mmrec_pipeline.storage import Lake

    return Lake(_SHARED_CACHE).feature_cache()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_raw(lake):
    """`sample_raw(version)`: the folder in this worker's lake that holds the generated sample `version` (seed 7),
    as `synthetic.read` finds it. Generated once per session in the cache the workers share (4-5 CPU s a version)
    and hard-linked here: raw files are only ever read, and the generator replaces files, never rewrites them."""
    from mmrec_pipeline.data import synthetic

    def sample_raw(version: int) -> Path:
        raw = lake / "sample" / "raw"
        if not (raw / f"v{version}" / "manifest.json").exists():
            # the generator locks the folder: a worker that finds the other generating it waits, then reuses it
            shared = synthetic.generate(_SHARED_CACHE / "sample" / f"v{version}", version=version,
                                        seed=synthetic.DEFAULT_SEED)
            shutil.rmtree(raw / f"v{version}", ignore_errors=True)
            shutil.copytree(shared, raw / f"v{version}", copy_function=os.link)
        return raw

    return sample_raw


@pytest.fixture(scope="session")
def sample_tables(sample_raw):
    """The generated sample v1, validated, 5-core filtered and split."""
    from mmrec_pipeline.data.filtering import user_core
    from mmrec_pipeline.data.schema import validate
    from mmrec_pipeline.data.splits import make_split
    from mmrec_pipeline.data.synthetic import read

    tables = validate(read(sample_raw(1), {"version": 1, "seed": 7}), "sample")
    return tables, make_split(user_core(tables.interactions, 5), "temporal")


@pytest.fixture(scope="session")
def sample_dataset(sample_tables):
    from mmrec_pipeline.data.dataset import RecDataset

    tables, split = sample_tables
    return RecDataset.from_tables("sample", split, tables.items)


@pytest.fixture(scope="session")
def sample_features(sample_tables, sample_dataset, shared_feature_cache):
    """Image and text feature tables of the sample (EfficientNet-Lite0 + all-MiniLM-L6-v2, packaged weights),
    as the feature assets compute them, and the `ItemFeatures` models read."""
    from mmrec_pipeline.compute import Compute
    from mmrec_pipeline.features.image import image_embeddings
    from mmrec_pipeline.features.text import text_embeddings
    from mmrec_pipeline.models.base import item_features
    from mmrec_pipeline.weights import ModelSources

    tables, _ = sample_tables
    compute, sources, cache = Compute(device="cpu", batch_size=64), ModelSources(), shared_feature_cache
    cache.path.mkdir(parents=True, exist_ok=True)
    with open(cache.path / "sample_features.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a worker that needs them while the other computes them waits, then reads
        image, _ = image_embeddings(tables.items, sources, compute, cache, models=("efficientnet_lite0",))
        text, _ = text_embeddings(tables.items, sources, compute, cache, gpt2=False)
    features = item_features(sample_dataset, {"image_embeddings": image, "text_embeddings": text})
    return {"image": image, "text": text, "features": features}


@pytest.fixture(scope="session")
def link_converted_summarizer(shared_feature_cache):
    """The packaged SmolLM2 GGUF converted to safetensors once per session (20-35 CPU s, the summarizer's first
    use), in the cache the workers share. Returns `link(feature_cache)`: puts it where a summarizer reading
    `feature_cache` finds it, as hard links (no bytes copied), so the test does not convert it again."""
    from mmrec_pipeline.features.summaries import converted_summarizer_dir, summarizer_source
    from mmrec_pipeline.weights import ModelSources

    # The other worker converting it meanwhile: this one waits, then reuses it (summarizer_source's lock).
    converted = Path(summarizer_source(ModelSources(), shared_feature_cache))

    def link(feature_cache) -> None:
        target = converted_summarizer_dir(ModelSources(), feature_cache)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(converted, target, copy_function=os.link)

    return link


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small CPU steps: on a shared 2-core machine two torch threads wait on each other (6x slower measured).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
