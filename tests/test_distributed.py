"""``distill run`` under ``torchrun`` with 2 CPU processes (gloo on 127.0.0.1), against one process with
the same global batch. The tiny teachers have no dropout, so both runs compute the same function; they
differ only in float summation order (DDP's all-reduce vs one batch's sum), which Adam amplifies for
near-zero gradients. Stated tolerance: every strategy's test accuracy and macro-F1 within one test text,
the per-epoch losses within 0.5%. The teacher-output cache, computed by 2 ranks from the same teachers,
holds bitwise the tensors one process writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from distill.testing import build_tiny_model, tiny_run_args, write_tiny_csv

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _args(root: Path, out: str, store: str, batch: int, *extra: str) -> list[str]:
    args = tiny_run_args(root / out, [root / "bert", root / "mpnet"], root / "news.csv", baselines="nokd",
                         teacher_store=root / store)
    for flag in ("--teacher-batch-size", "--student-batch-size"):
        args[args.index(flag) + 1] = str(batch)
    return args + list(extra)


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 8; two processes with batch 4 each (global 8), own teacher store."""
    root = tmp_path_factory.mktemp("ddp")
    build_tiny_model(root / "bert", "bert", 32, 4, dropout=0.0)
    build_tiny_model(root / "mpnet", "mpnet", 48, 2, dropout=0.0)
    write_tiny_csv(root / "news.csv", 30)
    _run([sys.executable, "-m", "distill.cli"] + _args(root, "one", "store1", 8))
    _run(TORCHRUN + ["-m", "distill.cli"] + _args(root, "two", "store2", 4))
    return root


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def test_two_processes_match_one_with_the_same_global_batch(runs):
    one, two = _report(runs / "one"), _report(runs / "two")
    assert one["parallel"]["world_size"] == 1
    par = two["parallel"]
    assert (par["world_size"], par["backend"], par["student_batch_per_rank"], par["student_global_batch"]) == \
        (2, "gloo", 4, 8)
    assert two["teacher_training"]["global_batch"] == 8
    n_test = one["data"]["split"]["sizes"]["test"]
    for strat in ("mtbert", "nokd"):
        a, b = one["runs"][strat][0], two["runs"][strat][0]
        for m in ("accuracy", "macro_f1"):
            assert abs(a["test"][m] - b["test"][m]) <= 100 / n_test + 1e-9, (strat, m, a["test"], b["test"])
        for ea, eb in zip(a["epochs"], b["epochs"]):
            assert eb["loss"] == pytest.approx(ea["loss"], rel=5e-3)
            assert len(eb["rank_samples_per_s"]) == 2 and eb["samples_per_s"] == pytest.approx(
                sum(eb["rank_samples_per_s"]), rel=1e-3)
        # every rank saw its half of the training part: 84 texts, 42 per rank and epoch
        assert b["train_texts"]["labelled"] == a["train_texts"]["labelled"]
    for t_one, t_two in zip(one["teachers"], two["teachers"]):
        assert abs(t_one["test"]["accuracy"] - t_two["test"]["accuracy"]) <= 100 / n_test + 1e-9
    md = (runs / "two" / "report.md").read_text()
    assert "**2 processes** (gloo, 1 node(s))" in md and "rank 1 samples/s" in md
    # rank 0 alone wrote: one log, one state, the saved students
    assert (runs / "two" / "student" / "model.safetensors").is_file()
    assert "[rank 1]" not in (runs / "two" / "log.txt").read_text()


def test_cache_built_by_two_ranks_equals_one_process_cache(runs):
    """Same teachers (a copy of the 1-process store without its cache file): 2 ranks compute the cache."""
    store3 = runs / "store3"
    shutil.copytree(runs / "store1", store3)
    for f in store3.glob("*/outputs-*.safetensors"):
        f.unlink()
    _run(TORCHRUN + ["-m", "distill.cli"] + _args(runs, "three", "store3", 4))
    (a,), (b,) = list((runs / "store1").glob("*/outputs-*")), list(store3.glob("*/outputs-*"))
    assert a.name == b.name
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    # safetensors writes the metadata map in no fixed order, so the bytes may differ there only
    assert safe_open(str(a), "pt").metadata() == safe_open(str(b), "pt").metadata()
    assert a.stat().st_size == b.stat().st_size


def test_resume_under_the_launcher_trains_only_the_new_seed(runs):
    run = runs / "two"
    before = _report(run)["runs"]["mtbert"][0]
    _run(TORCHRUN + ["-m", "distill.cli"] + _args(runs, "two", "store2", 4, "--resume", "--repeats", "2"))
    after = _report(run)
    assert [r["seed"] for r in after["runs"]["mtbert"]] == [13, 14]
    assert after["runs"]["mtbert"][0]["test"] == before["test"]
    assert after["runs"]["mtbert"][0]["train_seconds"] == before["train_seconds"]  # not retrained


def test_a_strategy_that_owns_its_step_is_refused_before_any_work(runs):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(TORCHRUN + ["-m", "distill.cli"] + _args(runs, "rl", "store2", 4, "--strategy", "rl"),
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode != 0
    assert "strategy 'rl' owns its training step" in res.stdout + res.stderr
    assert not (runs / "rl").exists()


def test_accelerate_launch_runs_the_same_job(runs):
    """``accelerate launch --multi_gpu`` starts torchrun's agent (on CPU as well; ``--cpu`` would give one
    process): the same ranks, the same batches, the same losses as torchrun's run."""
    pytest.importorskip("accelerate")
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "distill.cli"]
         + _args(runs, "acc", "store2", 4))
    acc, two = _report(runs / "acc"), _report(runs / "two")
    assert acc["parallel"]["world_size"] == 2
    assert acc["runs"]["mtbert"][0]["epochs"][0]["loss"] == pytest.approx(two["runs"]["mtbert"][0]["epochs"][0]["loss"],
                                                                          rel=1e-6)


def test_killed_launcher_job_resumes_to_the_uninterrupted_result(runs):
    """SIGKILL to torchrun and both workers once the MT-BERT student has checkpointed an epoch; the
    restarted job (all ranks, ``--resume``) continues from that epoch and ends exactly where an
    uninterrupted 2-process run ends (test metrics and every epoch's loss)."""
    import time

    import psutil

    more = ("--student-epochs", "12")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    _run(TORCHRUN + ["-m", "distill.cli"] + _args(runs, "ref12", "store2", 4, *more))
    cmd = TORCHRUN + ["-m", "distill.cli"] + _args(runs, "killed", "store2", 4, *more)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt, t0 = runs / "killed" / "checkpoints" / "mtbert-seed13.ckpt", time.time()
    while not ckpt.exists() and p.poll() is None and time.time() - t0 < 240:
        time.sleep(0.02)
    assert p.poll() is None, "the job ended before the kill"
    for q in psutil.Process(p.pid).children(recursive=True) + [psutil.Process(p.pid)]:
        q.kill()
    p.wait()
    _run(cmd + ["--resume"])
    assert "resuming student/mtbert/seed13 after epoch" in (runs / "killed" / "log.txt").read_text()
    ref, got = _report(runs / "ref12"), _report(runs / "killed")
    for strat in ("mtbert", "nokd"):
        a, b = ref["runs"][strat][0], got["runs"][strat][0]
        assert a["test"] == b["test"] and [e["loss"] for e in a["epochs"]] == [e["loss"] for e in b["epochs"]]


def test_two_nodes_meet_at_a_rendezvous_endpoint(runs):
    """``--nnodes 2`` with a c10d rendezvous endpoint: two torchrun agents (two "nodes" on 127.0.0.1,
    one process each) run the job of the single-node 2-process run and reach its losses exactly."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                                "--node_rank", str(n), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                                "--rdzv_id", "two-nodes", "-m", "distill.cli"] + _args(runs, "nodes", "store2", 4),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for n in (0, 1)]
    outs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    got, two = _report(runs / "nodes"), _report(runs / "two")
    assert (got["parallel"]["world_size"], got["parallel"]["nodes"]) == (2, 2)
    for strat in ("mtbert", "nokd"):
        assert [e["loss"] for e in got["runs"][strat][0]["epochs"]] == \
            [e["loss"] for e in two["runs"][strat][0]["epochs"]]
