import json

import pytest
import torch

from tests.helpers import tiny_model
from workbench.cache_store import CacheReader, write_cache
from workbench.caching import cache_activations
from workbench.errors import WorkbenchError

PROMPTS = [f"{a}+{b}=" for a, b in [(36, 59), (1, 2), (478, 256), (99, 1), (12, 34), (5, 55), (700, 300)]]
HOOKS = ["blocks.0.hook_resid_post", "blocks.0.attn.hook_z"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


def test_round_trip_random_access_and_batches(model, tmp_path):
    write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, positions=-1, shard_size=3, progress=False)
    reader = CacheReader(tmp_path)
    assert reader.complete and len(reader) == 7 and len(reader.shards) == 3
    ref = cache_activations(model, PROMPTS, HOOKS, positions=-1)
    for name in HOOKS:
        for i in range(7):
            assert torch.allclose(reader[name, i], ref[name][i], atol=1e-6)
    rows = torch.cat(list(reader.iter_batches("blocks.0.hook_resid_post", batch_size=4)))
    assert rows.shape == (7, model.cfg.d_model)
    assert torch.allclose(rows, ref["blocks.0.hook_resid_post"][:, 0], atol=1e-6)
    z_rows = next(reader.iter_batches("blocks.0.attn.hook_z", batch_size=2))
    assert z_rows.shape == (2, model.cfg.n_heads * model.cfg.d_head)  # heads joined into d
    shuffled = torch.cat(list(reader.iter_batches("blocks.0.hook_resid_post", 4, shuffle=True, seed=1)))
    assert sorted(shuffled.sum(1).tolist()) == pytest.approx(sorted(rows.sum(1).tolist()))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["shapes"]["blocks.0.attn.hook_z"] == [1, model.cfg.n_heads, model.cfg.d_head]
    assert manifest["model"]["weights_sha256"] and manifest["dtype"] == "float32"


def test_resume_writes_only_missing_shards(model, tmp_path):
    write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    # Simulate a kill after the first shard: the manifest lists only complete shards.
    (tmp_path / manifest["shards"][2]["file"]).unlink()
    (tmp_path / manifest["shards"][1]["file"]).unlink()
    kept = (tmp_path / manifest["shards"][0]["file"]).stat().st_mtime_ns
    manifest["shards"], manifest["complete"] = manifest["shards"][:1], False
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert not CacheReader(tmp_path).complete and len(CacheReader(tmp_path)) == 3
    write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, progress=False)
    assert (tmp_path / manifest["shards"][0]["file"]).stat().st_mtime_ns == kept
    reader = CacheReader(tmp_path)
    assert reader.complete and len(reader) == 7
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_refuses_to_mix_caches_and_unknown_hooks(model, tmp_path):
    write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, progress=False)
    with pytest.raises(WorkbenchError, match="other prompts"):
        write_cache(model, "tiny", PROMPTS[:3], HOOKS, tmp_path, shard_size=3, progress=False)
    with pytest.raises(WorkbenchError, match="not in this cache"):
        CacheReader(tmp_path)["blocks.0.hook_mlp_out", 0]
    with pytest.raises(IndexError):
        CacheReader(tmp_path)[HOOKS[0], 7]


def test_bad_inputs_are_user_errors(model, tmp_path):
    with pytest.raises(WorkbenchError, match="longer than the context"):
        write_cache(model, "tiny", ["1" * 100], HOOKS, tmp_path / "a", progress=False)
    with pytest.raises(WorkbenchError, match="do not exist"):
        write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path / "c", positions=-200, progress=False)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "manifest.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="not valid JSON"):
        write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path / "d", progress=False)


def test_glob_drops_hooks_that_never_fire(model, tmp_path):
    # hook_q/k/v/z fire; hook_result exists but does not fire without use_attn_result
    write_cache(model, "tiny", PROMPTS, "blocks.0.attn.hook_[qkvzr]*", tmp_path, progress=False)
    reader = CacheReader(tmp_path)
    assert "blocks.0.attn.hook_z" in reader.hooks and "blocks.0.attn.hook_result" not in reader.hooks


def test_resume_is_keyed_by_weights_not_by_the_path_typed(model, tmp_path):
    write_cache(model, "./tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, progress=False)
    write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, progress=False)  # same model: accepted
    with pytest.raises(WorkbenchError, match="other model weights"):
        write_cache(tiny_model(seed=99), "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, progress=False)


@pytest.mark.parametrize("overlap", [True, False], ids=["writer-thread", "in-line"])
def test_all_positions_of_mixed_lengths_are_padded_and_unpadded_on_read(model, tmp_path, overlap):
    prompts = ["1+2=", "478+256=", "36+59=", "9+9="]
    hook = "blocks.0.hook_resid_post"
    write_cache(model, "tiny", prompts, hook, tmp_path, positions=None, shard_size=3, batch_size=2, progress=False,
                overlap=overlap)
    reader = CacheReader(tmp_path)
    expect = []
    for p in prompts:
        _, cache = model.run_with_cache(p)
        expect.append(cache[hook][0])
    rows = torch.cat(list(reader.iter_batches(hook, batch_size=5)))
    assert torch.allclose(rows, torch.cat(expect), atol=1e-6)
    no_bos = torch.cat(list(reader.iter_batches(hook, batch_size=5, skip_first=1)))
    assert torch.allclose(no_bos, torch.cat([e[1:] for e in expect]), atol=1e-6)


def _resaved(path) -> bytes:
    """What safetensors' own save_file writes for the tensors a shard holds."""
    from safetensors.torch import load_file, save_file

    out = path.with_name("resaved.safetensors")
    save_file(load_file(str(path)), str(out))
    data = out.read_bytes()
    out.unlink()
    return data


@pytest.mark.parametrize("positions, hooks", [(-1, HOOKS), (None, HOOKS), ([-1, -2], "blocks.0.hook_*")])
@pytest.mark.parametrize("overlap", [True, False], ids=["writer-thread", "in-line"])
@pytest.mark.parametrize("direct_io", [True, False], ids=["direct-io", "page-cache"])
def test_shards_are_the_bytes_safetensors_writes(model, tmp_path, overlap, direct_io, positions, hooks):
    # Shards are written a batch at a time (padding left as zeros the file reads back): the files must be the
    # ones save_file writes for the same tensors, and their manifest digests those of the files.
    write_cache(model, "tiny", PROMPTS, hooks, tmp_path, positions=positions, shard_size=3, batch_size=2,
                progress=False, overlap=overlap, direct_io=direct_io)
    reader = CacheReader(tmp_path)  # checks every shard's size and SHA-256
    for shard in reader.shards:
        path = tmp_path / shard["file"]
        assert path.read_bytes() == _resaved(path)
    ref = cache_activations(model, PROMPTS, hooks, positions=-1)
    for name in ref:
        at = -1 if positions is None else 0
        for i, p in enumerate(PROMPTS):
            got = reader[name, i]
            if positions is None:
                got = got[: len(model.to_tokens(p)[0])]
            torch.testing.assert_close(got[at], ref[name][i, 0], atol=1e-6, rtol=0)


def test_attention_patterns_keep_their_head_axis_at_all_positions(model, tmp_path):
    prompts = ["12+34=", "56+78=", "11+22="]
    write_cache(model, "tiny", prompts, "blocks.0.attn.hook_pattern", tmp_path, positions=None, shard_size=2,
                progress=False)
    reader = CacheReader(tmp_path)
    n = len(model.to_tokens(prompts[0])[0])
    assert reader.manifest["shapes"]["blocks.0.attn.hook_pattern"] == [model.cfg.n_heads, n, n]
    _, cache = model.run_with_cache(prompts[2])
    assert torch.allclose(reader["blocks.0.attn.hook_pattern", 2], cache["blocks.0.attn.hook_pattern"][0], atol=1e-6)


def _fail_writes(monkeypatch, fails):
    """Make the cache's writes raise ENOSPC once ``fails(offsets written so far)`` is true; the real write back."""
    from workbench.direct_io import BlockWriter

    real, calls = BlockWriter.write, []

    def failing(self, data, offset):
        calls.append(offset)
        if fails(calls):
            raise OSError(28, "No space left on device")
        real(self, data, offset)

    monkeypatch.setattr(BlockWriter, "write", failing)
    return real


@pytest.mark.parametrize("overlap", [True, False], ids=["writer-thread", "in-line"])
def test_a_failed_write_keeps_the_complete_shards_and_resumes(model, tmp_path, overlap, monkeypatch):
    import workbench.cache_store as store

    real = _fail_writes(monkeypatch, lambda calls: len(calls) > 12)  # part way into the second shard
    with pytest.raises(OSError, match="No space left"):
        write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, batch_size=2, progress=False,
                    overlap=overlap)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    partial = CacheReader(tmp_path)
    assert not partial.complete and 0 < len(partial) < len(PROMPTS)
    monkeypatch.setattr(store.BlockWriter, "write", real)
    write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, batch_size=2, progress=False,
                    overlap=overlap)
    assert CacheReader(tmp_path).complete


@pytest.mark.parametrize("overlap", [True, False], ids=["writer-thread", "in-line"])
def test_an_error_while_caching_discards_only_the_open_shard(model, tmp_path, overlap, monkeypatch):
    import workbench.cache_store as store

    real, shards = store.cached_batches, []

    def interrupted(*args, **kwargs):  # called once per shard
        shards.append(args)
        for i, item in enumerate(real(*args, **kwargs)):
            if len(shards) == 2 and i == 1:  # the second shard's first batch is being written
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(store, "cached_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, batch_size=2, progress=False,
                    overlap=overlap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard-00000.safetensors"]
    assert len(CacheReader(tmp_path)) == 3
    monkeypatch.setattr(store, "cached_batches", real)
    write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, batch_size=2, progress=False,
                    overlap=overlap)
    assert CacheReader(tmp_path).complete and len(CacheReader(tmp_path)) == len(PROMPTS)


def test_a_writer_thread_only_where_a_core_is_free(model, tmp_path, monkeypatch):
    import workbench.cache_store as store

    monkeypatch.setattr(store.os, "sched_getaffinity", lambda pid: {0, 1})
    for threads, free in [(1, True), (2, False), (4, False)]:
        monkeypatch.setattr(store.torch, "get_num_threads", lambda t=threads: t)
        assert store.free_core_for_writer() is free
    assert store.free_core_for_writer("cuda") is True  # the forward runs elsewhere: the CPU is free to write
    made = []
    for cls in (store._InlineWriter, store._ShardWriter):
        monkeypatch.setattr(cls, "finish", lambda self, real=cls.finish: (made.append(type(self)), real(self))[1])
    for free, kind in [(True, store._ShardWriter), (False, store._InlineWriter)]:
        monkeypatch.setattr(store, "free_core_for_writer", lambda device, f=free: f)
        write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path / kind.__name__, shard_size=3, progress=False)
        assert made[-1] is kind and CacheReader(tmp_path / kind.__name__).complete


@pytest.mark.parametrize("overlap", [True, False], ids=["writer-thread", "in-line"])
def test_a_shard_that_cannot_start_leaves_no_temporary_file(model, tmp_path, overlap, monkeypatch):
    _fail_writes(monkeypatch, lambda calls: calls[-1] == 0 and calls.count(0) == 2)  # the second shard's header
    with pytest.raises(OSError, match="No space left"):
        write_cache(model, "tiny", PROMPTS, HOOKS, tmp_path, shard_size=3, batch_size=2, progress=False,
                    overlap=overlap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard-00000.safetensors"]
