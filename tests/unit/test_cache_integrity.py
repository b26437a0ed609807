"""A damaged activation cache is refused by name, on open and on resume; it is never reported complete."""

import json

import pytest
import torch

import workbench.cache_store as cache_store
from tests.helpers import tiny_model
from workbench.cache_store import CacheReader, write_cache
from workbench.errors import WorkbenchError

PROMPTS = [f"{a}+{b}=" for a, b in [(36, 59), (1, 2), (478, 256), (99, 1), (12, 34), (5, 55), (700, 300)]]
HOOKS = ["blocks.0.hook_resid_post"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


@pytest.fixture
def cache(model, tmp_path):
    write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, progress=False)
    return tmp_path


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def both_refuse(model, path, match):
    """Opening and resuming the cache both fail with a WorkbenchError matching ``match``."""
    with pytest.raises(WorkbenchError, match=match):
        CacheReader(path)
    with pytest.raises(WorkbenchError, match=match):
        write_cache(model, "tiny", PROMPTS, HOOKS, path, shard_size=3, progress=False)


def test_the_manifest_records_every_shards_size_and_digest(cache):
    m = manifest(cache)
    assert m["version"] == 2 and m["complete"]
    for s in m["shards"]:
        assert s["bytes"] == (cache / s["file"]).stat().st_size and len(s["sha256"]) == 64


def test_a_deleted_shard_is_refused_by_name(model, cache):
    (cache / "shard-00001.safetensors").unlink()
    both_refuse(model, cache, r"shard-00001\.safetensors is missing")


def test_a_truncated_shard_is_refused_by_name(model, cache):
    file = cache / "shard-00002.safetensors"
    file.write_bytes(file.read_bytes()[:-7])
    both_refuse(model, cache, r"shard-00002\.safetensors is damaged: \d+ bytes, manifest.json records")


def test_a_shard_altered_in_place_is_refused_by_its_digest(model, cache):
    file = cache / "shard-00000.safetensors"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF  # same size, one activation changed
    file.write_bytes(bytes(data))
    both_refuse(model, cache, r"shard-00000\.safetensors is damaged: its SHA-256 differs")
    CacheReader(cache, verify=False)  # sizes only, on request


def test_a_manifest_listing_fewer_shards_than_it_says_is_refused(model, cache):
    m = manifest(cache)
    m["shards"] = m["shards"][:2]  # still "complete": true
    (cache / "manifest.json").write_text(json.dumps(m))
    both_refuse(model, cache, r"says complete=true but lists 2 of the 3 shards")
    m["shards"][1]["count"] = 2  # a shard whose count does not match the layout
    m["complete"] = False
    (cache / "manifest.json").write_text(json.dumps(m))
    both_refuse(model, cache, r"shard entry 1 .* is not one this cache's layout allows")


@pytest.mark.parametrize("text, match", [
    (b"[]", r"not a workbench-activation-cache manifest \(a JSON list"),
    (b"{not json", r"not valid JSON"),
    (b"\xff\xfe\x00binary", r"manifest.json is unreadable"),
    (json.dumps({"format": "workbench-activation-cache", "version": 2}).encode(), r"lacks the keys \['model', 'hooks'"),
])
def test_a_broken_manifest_is_a_user_error(model, cache, text, match):
    (cache / "manifest.json").write_bytes(text)
    both_refuse(model, cache, match)


def test_digests_are_checked_once_on_open_not_on_every_read(cache, monkeypatch):
    calls = []
    real = cache_store.file_digest
    monkeypatch.setattr(cache_store, "file_digest", lambda p: calls.append(p) or real(p))
    reader = CacheReader(cache)
    assert len(calls) == 3
    for _ in range(3):
        assert sum(len(b) for b in reader.iter_batches(HOOKS[0], batch_size=2)) == len(PROMPTS)
    reader[HOOKS[0], 4]
    assert len(calls) == 3


def test_a_shard_removed_after_opening_is_a_user_error(cache):
    reader = CacheReader(cache)
    (cache / "shard-00001.safetensors").unlink()
    with pytest.raises(WorkbenchError, match=r"shard-00001\.safetensors cannot be read"):
        list(reader.iter_batches(HOOKS[0], batch_size=2))


def legacy(path):
    """The cache as an older workbench wrote it: manifest version 1, no shard sizes or digests."""
    m = manifest(path)
    m["version"] = 1
    for s in m["shards"]:
        del s["bytes"], s["sha256"]
    (path / "manifest.json").write_text(json.dumps(m))


def test_a_cache_without_digests_stays_readable_and_gains_them_on_resume(model, cache):
    expected = torch.cat(list(CacheReader(cache).iter_batches(HOOKS[0], batch_size=4)))
    legacy(cache)
    reader = CacheReader(cache)
    assert reader.complete
    assert torch.equal(torch.cat(list(reader.iter_batches(HOOKS[0], batch_size=4))), expected)
    write_cache(model, "tiny", PROMPTS, HOOKS, cache, shard_size=3, progress=False)
    m = manifest(cache)
    assert m["version"] == 2 and all("sha256" in s for s in m["shards"])


def test_a_truncated_shard_of_a_cache_without_digests_is_refused(model, cache):
    legacy(cache)
    file = cache / "shard-00001.safetensors"
    file.write_bytes(file.read_bytes()[:-5])
    both_refuse(model, cache, r"shard-00001\.safetensors is damaged")


def test_resume_after_a_kill_still_completes(model, cache):
    m = manifest(cache)
    (cache / m["shards"][2]["file"]).unlink()
    m["shards"], m["complete"] = m["shards"][:2], False
    (cache / "manifest.json").write_text(json.dumps(m))
    assert not CacheReader(cache).complete
    write_cache(model, "tiny", PROMPTS, HOOKS, cache, shard_size=3, progress=False)
    assert CacheReader(cache).complete and len(CacheReader(cache)) == len(PROMPTS)
