"""Crash campaign: ``distill run`` and ``distill export`` killed with SIGKILL at random moments in every
phase, resumed, and compared with an uninterrupted run.

For each kill the campaign starts the job as a real process, waits until the phase it targets has begun
(a log line or a ``state.json`` entry marks the end of the phase before it), sleeps a random fraction of
that phase's duration in the uninterrupted reference run, sends SIGKILL, and records which phase was
really interrupted. It then resumes (``distill run --resume``; an export is simply run again) until the
job finishes, and checks:

* **resumed**: the resumed job exits 0 with a report (an export with a manifest);
* **identical**: every metric of the report (teachers, ensemble, every student seed's dev/test metrics
  and per-epoch losses) equals the uninterrupted run's, exactly (CPU, fixed threads);
  an export's test metrics, parity figures and student sha256 equal the reference export's;
* **clean**: no partial file anywhere in the run folder, the teacher store or the export (no temporary
  names left, every safetensors file opens, every JSON file parses).

Usage (tiny models built from configs, about 25 s per kill on 2 cores)::

    python -m benchmarks.crash_campaign --work /tmp/crash --kills 30
    python -m benchmarks.crash_campaign --work /tmp/crash-default --job default --kills 3 --no-export \\
        --reference runs/default --store runs/.teacher-store \\
        --targets student/mtbert/seed13,student/nokd/seed13,report   # the default job, teachers reused
    python -m benchmarks.crash_campaign --work /tmp/crash-chain --job default --chain --kills 2 \
        --reference runs/default --durations '{"prepare": 4, "teachers": 500, ...}'
        # one default run killed in every phase in turn (fresh teacher store), then 2 export kills

Prints one line per kill and a table: kills tried / resumed / identical / clean, per phase. Exit status 1
when any kill did not resume, differs or left a partial file. Results: ``WORK/campaign.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PARTIAL = re.compile(r"(^\..+\.\d+\.(?:[^.]+\.tmp|tmp-.+)$)|(^\..+\.old-\d+$)|(\.tmp$)")
POLL_S = 0.005


@dataclass
class Phase:
    """One phase of a job: its name and the condition that marks its end (a log regex or a state key)."""
    name: str
    log: str | None = None
    state: str | None = None

    def ended(self, run_dir: Path) -> bool:
        if self.state is not None:
            return self.state in _state(run_dir)
        return self.log is not None and re.search(self.log, _read(run_dir / "log.txt"), re.M) is not None


@dataclass
class Kill:
    """The outcome of one kill."""
    index: int
    target: str
    phase: str = ""
    delay_s: float = 0.0
    killed: bool = False
    resumed: bool = False
    identical: bool = False
    clean: bool = False
    swept: int = 0
    notes: list[str] = field(default_factory=list)


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "state.json").read_text()).get("done", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def run_phases(strategies: list[str], seeds: list[int]) -> list[Phase]:
    """The phases of ``distill run`` in order (see ``distill/pipeline.py``), each with its end condition."""
    phases = [Phase("prepare", log=r"co-finetuning \d+ teacher|reusing finetuned teachers"),
              Phase("teachers", state="teachers"), Phase("teacher_outputs", log=r"ensemble: test acc")]
    phases += [Phase(f"student/{s}/seed{k}", state=f"student/{s}/seed{k}") for k in seeds for s in strategies]
    return phases + [Phase("report", state="report")]


def metrics_of(report: dict) -> dict:
    """What must not change when a run is killed and resumed: every metric and loss, no timings."""
    keep = {"teachers": [{k: t[k] for k in ("name", "dev", "test")} for t in report["teachers"]],
            "ensemble": {k: report["ensemble"].get(k) for k in ("dev", "test")}, "runs": {}}
    for strat, runs in report["runs"].items():
        keep["runs"][strat] = [{"seed": r["seed"], "dev": r["dev"], "test": r["test"],
                                "losses": [(e["loss"], e["components"]) for e in r["epochs"]]} for r in runs]
    return keep


def export_metrics_of(manifest: dict) -> dict:
    """An export's outcome without timings: test metrics, parity figures, the student it came from."""
    parity = {k: v for k, v in manifest["parity"].items() if k not in ("seconds",)}
    return {"test_metrics": manifest["test_metrics"], "parity": parity, "student": manifest["student_sha256"]}


def partial_files(*folders: Path, no_empty: tuple[Path, ...] = ()) -> list[str]:
    """Temporary names left behind, safetensors files that do not open, JSON files that do not parse, and
    empty folders under ``no_empty`` (a teacher store entry created by a run killed before writing)."""
    from safetensors import safe_open

    bad = [f"empty folder left: {d}" for root in no_empty if root.exists() for d in root.rglob("*")
           if d.is_dir() and not any(d.iterdir())]
    for folder in folders:
        if not folder.exists():
            continue
        for p in folder.rglob("*"):
            if PARTIAL.search(p.name):
                bad.append(f"temporary name left: {p}")
            elif p.is_file() and p.suffix == ".safetensors":
                try:
                    with safe_open(str(p), "pt") as fh:
                        list(fh.keys())
                except Exception as e:  # noqa: BLE001 - any failure to open is the finding
                    bad.append(f"unreadable {p}: {type(e).__name__}")
            elif p.is_file() and p.suffix == ".json":
                try:
                    json.loads(p.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    bad.append(f"unparsable {p}")
    return bad


class Job:
    """How to start the job's processes: ``distill run`` arguments and the export command."""

    def __init__(self, run_args: list[str], env: dict[str, str]):
        self.run_args, self.env = run_args, env

    def run_cmd(self, out: Path, store: Path, resume: bool = False) -> list[str]:
        cmd = [sys.executable, "-m", "distill.cli", "run", *self.run_args, "--out", str(out), "--teacher-store",
               str(store)]
        return cmd + (["--resume"] if resume else [])

    def export_cmd(self, run_dir: Path, out: Path) -> list[str]:
        return [sys.executable, "-m", "distill.cli", "export", str(run_dir), "--out", str(out), "--allow-drift"]

    def start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        with log.open("ab") as fh:  # the child keeps its own descriptor
            return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env)

    def finish(self, cmd: list[str], log: Path) -> int:
        """Run ``cmd`` to its end (a resume, an export run again); its exit status."""
        return self.start(cmd, log).wait()


def kill_after(proc: subprocess.Popen, delay_s: float) -> bool:
    """Sleep ``delay_s`` then SIGKILL ``proc`` if it still runs; True when the signal was sent."""
    time.sleep(delay_s)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return sent


def timeline(job: Job, phases: list[Phase], out: Path, store: Path) -> tuple[dict[str, float], float]:
    """Run the job uninterrupted, polling its end conditions; returns each phase's duration (s) and the
    total (s)."""
    t0 = time.perf_counter()
    proc = job.start(job.run_cmd(out, store), out.parent / f"{out.name}.out")
    ends: dict[str, float] = {}
    while True:
        for ph in phases:
            if ph.name not in ends and ph.ended(out):
                ends[ph.name] = time.perf_counter() - t0
        if proc.poll() is not None:
            break
        time.sleep(POLL_S)
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted reference run failed (exit {proc.returncode}); see {out.parent}")
    total = time.perf_counter() - t0
    durations, prev = {}, 0.0
    for ph in phases:
        end = ends.get(ph.name, total)
        durations[ph.name], prev = max(end - prev, 0.01), end
    return durations, total


def kill_run(job: Job, phases: list[Phase], durations: dict[str, float], k: Kill, out: Path, store: Path,
             rng: random.Random, resume: bool) -> None:
    """Start (or resume) the run, wait for the target phase, kill it part-way; records the phase hit."""
    i = [p.name for p in phases].index(k.target)
    proc = job.start(job.run_cmd(out, store, resume=resume), out.parent / f"{out.name}.out")
    while i > 0 and not phases[i - 1].ended(out) and proc.poll() is None:
        time.sleep(POLL_S)  # the phase before the target has ended: the target phase is under way
    k.delay_s = rng.uniform(0, durations[k.target])
    k.killed = kill_after(proc, k.delay_s)
    k.phase = next((p.name for p in phases if not p.ended(out)), "finished")
    k.killed = k.killed and k.phase != "finished"  # the signal came after the last phase: nothing was cut


def finish_run(job: Job, out: Path, store: Path) -> bool:
    rc = job.finish(job.run_cmd(out, store, resume=True), out.parent / f"{out.name}.out")
    return rc == 0 and (out / "report.json").is_file()


def chain_kills(job: Job, phases: list[Phase], durations: dict[str, float], targets: list[str], trial: Path,
                store: Path | None, rng: random.Random, ref_metrics: dict) -> list[Kill]:
    """One run killed once in each of ``targets`` in turn (each kill followed by ``--resume``, which the
    next kill interrupts), then resumed to the end and compared with the reference: every phase of a
    long job (the default job) hit for the price of one run. The outcome is shared by all its kills."""
    shutil.rmtree(trial, ignore_errors=True)
    trial.mkdir(parents=True)
    out, store = trial / "run", store or trial / "store"
    kills = []
    for i, target in enumerate(targets):
        k = Kill(index=i, target=target)
        kill_run(job, phases, durations, k, out, store, rng, resume=out.exists())
        print(f"chain kill {i} target {k.target:22s} hit {k.phase:22s} after {k.delay_s:6.2f} s: "
              f"{'killed' if k.killed else 'finished first'}", flush=True)
        kills.append(k)
    resumed = finish_run(job, out, store)
    identical = resumed and metrics_of(json.loads((out / "report.json").read_text())) == ref_metrics
    bad = partial_files(out, store, no_empty=(store,)) if store.parent == trial else partial_files(out)
    swept = _read(out / "log.txt").count("left by a killed")
    for k in kills:
        k.resumed, k.identical, k.clean, k.swept, k.notes = resumed, identical, not bad, swept, bad[:5]
    print(f"chain of {len(kills)} kills: resumed {resumed}, identical {identical}, clean {not bad}, "
          f"partials swept {swept}" + (f" ({'; '.join(bad[:5])})" if bad else ""), flush=True)
    return kills


def campaign(args: argparse.Namespace) -> int:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.job == "tiny":
        from distill.testing import build_tiny_model, tiny_run_args, write_tiny_csv

        assets = work / "assets"
        teachers = [build_tiny_model(assets / "bert", "bert", 32, 4), build_tiny_model(assets / "mpnet", "mpnet", 48, 2)]
        data = write_tiny_csv(assets / "news.csv", 30)
        run_args = tiny_run_args(Path("unused"), teachers, data, baselines="nokd", repeats=2)[3:]  # drop run --out X
        seeds = [13, 14]
    else:
        run_args, seeds = ["--threads", str(args.threads)], [13]
    strategies = [args.strategy] + (["nokd"] if args.strategy != "nokd" else [])
    run_args += ["--strategy", args.strategy] + [x for kv in args.set or [] for x in ("--set", kv)]
    job = Job(run_args, env)
    phases = run_phases(strategies, seeds)

    ref = work / "reference"
    if args.reference:
        ref_run = Path(args.reference)
        print(f"reference: {ref_run} (given)")
        durations = {p.name: 60.0 for p in phases}  # no timeline: kill within the first minute of each phase
        durations.update(json.loads(args.durations) if args.durations else {})
    else:
        shutil.rmtree(ref, ignore_errors=True)
        ref.mkdir(parents=True)
        ref_run = ref / "run"
        durations, total = timeline(job, phases, ref_run, ref / "store")
        print(f"reference run: {total:.1f} s; phase durations (s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in durations.items()))
    ref_metrics = metrics_of(json.loads((ref_run / "report.json").read_text()))
    ref_export = None
    targets = [p.name for p in phases] + (["export"] if not args.no_export else [])
    if args.targets:
        unknown = sorted(set(args.targets.split(",")) - set(targets))
        if unknown:
            raise SystemExit(f"--targets: unknown phase(s) {unknown}; choose from {', '.join(targets)}")
        targets = args.targets.split(",")
    if "export" in targets:
        t0 = time.perf_counter()
        rc = subprocess.run(job.export_cmd(ref_run, ref / "export"), env=env, capture_output=True).returncode
        durations["export"] = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"the reference export failed (exit {rc})")
        ref_export = export_metrics_of(json.loads((ref / "export" / "manifest.json").read_text()))

    kills: list[Kill] = []
    if args.chain:
        kills = chain_kills(job, phases, durations, [t for t in targets if t != "export"], work / "chain",
                            Path(args.store) if args.store else None, rng, ref_metrics)
        targets = ["export"] if "export" in targets else []
    for i in range(len(kills), len(kills) + (args.kills if targets else 0)):
        k = Kill(index=i, target=targets[i % len(targets)])
        trial = work / f"kill{i:03d}"
        shutil.rmtree(trial, ignore_errors=True)
        trial.mkdir()
        if k.target == "export":
            run_dir = trial / "run"
            shutil.copytree(ref_run, run_dir, ignore=shutil.ignore_patterns("export"))
            proc = job.start(job.export_cmd(run_dir, trial / "export"), trial / "export.out")
            k.delay_s = rng.uniform(0, durations["export"])
            k.killed = kill_after(proc, k.delay_s)
            k.phase = "export" if k.killed else "finished"
            rc = job.finish(job.export_cmd(run_dir, trial / "export"), trial / "export.out")
            k.resumed = rc == 0 and (trial / "export" / "manifest.json").is_file()
            if k.resumed:
                got = export_metrics_of(json.loads((trial / "export" / "manifest.json").read_text()))
                k.identical = got == ref_export
            bad = partial_files(trial / "export") + [str(p) for p in trial.glob(".export*")]
        else:
            out = trial / "run"
            store = Path(args.store) if args.store else trial / "store"
            kill_run(job, phases, durations, k, out, store, rng, resume=out.exists())
            k.resumed = finish_run(job, out, store)
            if k.resumed:
                got = metrics_of(json.loads((out / "report.json").read_text()))
                k.identical = got == ref_metrics
                if not k.identical:
                    k.notes.append("metrics differ from the uninterrupted run")
            bad = partial_files(out, store, no_empty=(store,)) if not args.store else partial_files(out)
        k.clean = not bad
        k.swept = sum(_read(f).count("left by a killed") for f in (trial / "run" / "log.txt", trial / "export.out"))
        k.notes += bad[:5]
        kills.append(k)
        print(f"kill {i:3d} target {k.target:22s} hit {k.phase:22s} after {k.delay_s:6.2f} s: "
              f"{'killed' if k.killed else 'finished first'}, resumed {k.resumed}, identical {k.identical}, "
              f"clean {k.clean}, partials swept {k.swept}" + (f"  ({'; '.join(k.notes)})" if k.notes else ""), flush=True)
        if k.resumed and k.identical and k.clean and not args.keep:
            shutil.rmtree(trial, ignore_errors=True)

    hit = [k for k in kills if k.killed]
    print("\n| phase hit | kills | resumed | identical | clean |\n|---|---:|---:|---:|---:|")
    for ph in dict.fromkeys(k.phase for k in hit):
        ks = [k for k in hit if k.phase == ph]
        print(f"| {ph} | {len(ks)} | {sum(k.resumed for k in ks)} | {sum(k.identical for k in ks)} | "
              f"{sum(k.clean for k in ks)} |")
    ok = all(k.resumed and k.identical and k.clean for k in kills)
    print(f"| **all** | {len(hit)} | {sum(k.resumed for k in hit)} | {sum(k.identical for k in hit)} | "
          f"{sum(k.clean for k in hit)} |\n\nkills tried {len(kills)}, landed {len(hit)} (the rest finished "
          f"before the signal), resumed {sum(k.resumed for k in kills)}/{len(kills)}, identical "
          f"{sum(k.identical for k in kills)}/{len(kills)}, clean {sum(k.clean for k in kills)}/{len(kills)}; "
          f"partial files left by the kills and swept on resume: {sum(k.swept for k in kills)}")
    (work / "campaign.json").write_text(json.dumps({"job": args.job, "seed": args.seed, "durations_s": durations,
                                                    "kills": [asdict(k) for k in kills]}, indent=2))
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="scratch folder (reference run, one folder per kill)")
    ap.add_argument("--kills", type=int, default=30, help="kills to try, spread round-robin over the phases")
    ap.add_argument("--job", choices=("tiny", "default"), default="tiny",
                    help="tiny: tiny models built from configs; default: the README's default job")
    ap.add_argument("--reference", help="an uninterrupted run folder of the same job to compare with "
                                        "(default: run one first)")
    ap.add_argument("--durations", help="JSON {phase: seconds} to spread kills over (with --reference)")
    ap.add_argument("--store", help="a teacher store to share between the kills (teachers and cache reused, so "
                                    "co-finetuning is not killed; for the default job)")
    ap.add_argument("--threads", type=int, default=2, help="--threads of the default job")
    ap.add_argument("--strategy", default="mtbert", help="the job's --strategy (its baseline is nokd)")
    ap.add_argument("--set", action="append", metavar="STRATEGY.FIELD=VALUE", help="strategy settings of the job")
    ap.add_argument("--no-export", action="store_true", help="kill `distill run` only")
    ap.add_argument("--targets", help="comma-separated phases to aim at (default: every phase, round-robin)")
    ap.add_argument("--chain", action="store_true",
                    help="kill one run once in each target phase in turn, resuming in between (see chain_kills); "
                         "--kills then counts the export kills only")
    ap.add_argument("--keep", action="store_true", help="keep the folders of kills that passed")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    return campaign(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
