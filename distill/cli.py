"""The ``distill`` command line (Typer)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import DistillError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=("Distill a small, fast text classifier from an ensemble of pre-trained teacher encoders "
          "(MT-BERT multi-teacher KD), export it to ONNX fp32/INT8, serve it with BentoML and benchmark it.\n\n"
          "Typical flow: `distill run --out runs/bbc` -> `distill export runs/bbc` -> `distill serve runs/bbc`"
          " -> `distill bench runs/bbc`."),
)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def run(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Job file (YAML, or a run's config.json): option names with '_' for '-' as keys (e.g. student_epochs: 4, teachers: [...], settings: {mtbert: {w_hid: 0.1}}); flags given on the command line override it. Unknown keys and wrong types fail before any work. See examples/."),
    out: Path = typer.Option(Path("runs/default"), "--out", "-o", help="Run folder to write (config, split, teachers, student, report)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset: 'bbc' (built-in default, BBC News), 'ag_news', 'mind', or a path to a CSV/TSV/JSONL file, a folder <label>/<file>.txt, the AG News CSV or MIND news.tsv."),
    data_format: str = typer.Option("auto", "--format", help="auto | bbc | folder | agnews | mind | csv | tsv | jsonl."),
    text_col: List[str] = typer.Option(["text"], "--text-col", help="Text column(s) of a CSV/TSV/JSONL (repeat to join several, e.g. title + abstract). Names, or 0-based indices without a header."),
    label_col: str = typer.Option("label", "--label-col", help="Label column (name or 0-based index)."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Optional id column; default the row number."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Text encoding of a CSV/TSV/JSONL data file (e.g. cp1252 for Excel/Windows exports, latin-1)."),
    seed: int = typer.Option(13, help="Seed of the split, the teachers and the first student."),
    dev_frac: float = typer.Option(0.1, help="Fraction of each class in the dev part."),
    test_frac: float = typer.Option(0.2, help="Fraction of each class in the test part."),
    train_cap: Optional[int] = typer.Option(None, help="Cap the training part at this many examples (stratified sample)."),
    max_length: int = typer.Option(64, help="Max tokens per text (longer texts are truncated; 64 keeps the default job inside its CPU budget, news topics are decided early in a text)."),
    unlabeled: List[str] = typer.Option([], "--unlabeled", help="Transfer set: unlabelled in-domain texts the teachers label for the student (CSV/TSV/JSONL read with --text-col, a .txt file with one text per line, or any --data format; labels ignored; repeat for several files). Texts equal to a dev/test text are refused."),
    unlabeled_from_train: int = typer.Option(0, "--unlabeled-from-train", help="Transfer set from the data: N training-part texts that --train-cap leaves out, without their labels (-1 = all of them)."),
    augment: int = typer.Option(0, "--augment", help="Transfer set by data augmentation (Tang et al. 2019): N perturbed copies of every labelled and transfer text (words dropped / replaced, n-gram cuts), labelled by the teachers; only strategies that learn from teachers use them."),
    teacher: List[str] = typer.Option(["sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-mpnet-base-v2"], "--teacher", "-t", help="Teacher encoder: Hugging Face hub id (resolved offline from the HF cache or packaged copies) or local folder. Repeat for several. A finetuned classifier folder for the same labels (a run's teachers/teacher_i or student) is used as given, not co-finetuned."),
    teacher_mode: str = typer.Option("joint", help="joint = MT-BERT co-finetuning through one shared head; independent = each teacher its own head (ablation)."),
    teacher_epochs: int = typer.Option(1, help="Co-finetuning epochs."),
    teacher_patience: Optional[int] = typer.Option(None, help="Early stopping: stop co-finetuning when the teachers' mean dev macro-F1 has not improved for N epochs, and keep the best dev epoch's weights (--teacher-epochs is then the maximum)."),
    teacher_time_budget: Optional[float] = typer.Option(None, help="Seconds of co-finetuning after which no new epoch starts (the best dev epoch's weights are kept)."),
    teacher_lr: float = typer.Option(5e-5, help="Teacher encoder learning rate (AdamW)."),
    teacher_train_layers: int = typer.Option(2, help="Train only the top N layers of each teacher (0 = all). Lower layers stay at their pre-trained weights."),
    teacher_batch_size: int = typer.Option(16, help="Co-finetuning batch size."),
    head_lr: float = typer.Option(1e-3, help="Learning rate of the new heads, projections and W_ij matrices."),
    head_dim: Optional[int] = typer.Option(None, help="Size of the shared head space (default: that of the teachers given as finetuned classifiers, else the smallest teacher hidden size)."),
    pooling: str = typer.Option("attentive", help="attentive (MT-BERT, query dim 200) | mean | cls."),
    student: Optional[str] = typer.Option(None, help="Student: default = token embeddings + first K layers of the smallest teacher; 'textcnn' = paper 003's TextCNN (settings: --set textcnn.FIELD=VALUE, see `distill strategies`); or a HF checkpoint (hub id/folder) or a config.json (random init)."),
    student_from: Optional[int] = typer.Option(None, help="Index of the teacher the student is cut from (and whose tokenizer it uses)."),
    student_layers: Optional[int] = typer.Option(None, "--student-layers", "-k", help="Student depth K (default half the source teacher's depth)."),
    student_head_init: str = typer.Option("shared", help="shared = start from the co-finetuned shared head when sizes match; random."),
    student_init: str = typer.Option("pretrained", help="Encoder layers the student starts from: pretrained = the source teacher's first K pre-trained layers; teacher = its first K layers after co-finetuning (DistilBERT-style initialisation from the teacher; every strategy of the run, nokd included, starts there)."),
    strategy: str = typer.Option("mtbert", help="Distillation strategy (`distill strategies` lists them): mtbert | camkd | ebkd | aekd | rl | avg | hinton | nokd."),
    baselines: str = typer.Option("nokd", help="Comma-separated strategies trained beside it for comparison ('' for none), e.g. nokd,hinton,avg,camkd. With --resume it may change: new ones are trained beside the finished students."),
    student_epochs: int = typer.Option(3, help="Student training epochs (the TextCNN: --set textcnn.epochs)."),
    student_patience: Optional[int] = typer.Option(None, help="Early stopping of every student (no-KD baseline included): score dev macro-F1 after each epoch, stop when it has not improved for N epochs, and keep the best dev epoch's weights (--student-epochs is then the maximum)."),
    student_lr: float = typer.Option(1e-4, help="Student encoder learning rate (AdamW; the TextCNN: --set textcnn.lr)."),
    student_batch_size: int = typer.Option(16, help="Student batch size."),
    repeats: int = typer.Option(1, help="Number of student seeds (seed, seed+1, ...); results as mean and std. With --resume it may change: more seeds are added to the run, fewer report the first ones."),
    weak_teacher_margin: Optional[str] = typer.Option("3", help="Leave a teacher out of distillation when its dev macro-F1 is more than this many points below the best teacher's ('none' keeps every teacher)."),
    select_student: str = typer.Option("dev", help="dev = the run's student is the no-KD baseline unless the main strategy's dev macro-F1 gain over it, paired by seed, is at least one standard error of the per-seed differences (one seed: unless it is below; needs nokd in --baselines); strategy = always the main strategy."),
    set_: List[str] = typer.Option([], "--set", help="Strategy setting STRATEGY.FIELD=VALUE (repeatable), e.g. --set camkd.alpha=0.7 --set mtbert.w_hid=0.1; FIELD=VALUE sets it on every strategy of the run that has it. `distill strategies` lists them all."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    precision: str = typer.Option("auto", help="auto (bf16/fp16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 | fp16."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for PyTorch (default: all cores)."),
    teacher_cache: bool = typer.Option(True, help="Cache frozen teachers' outputs once instead of running them at every step."),
    cache_max_mb: float = typer.Option(4096.0, help="Largest teacher-output cache (MB); above it teachers run online."),
    teacher_store: Optional[Path] = typer.Option(None, help="Folder of finetuned teachers and teacher-output caches reused across runs (default: $DISTILL_TEACHER_STORE, else ${XDG_CACHE_HOME:-~/.cache}/distill/teachers; a .teacher-store folder beside --out from older versions is still used)."),
    trust_remote_code: bool = typer.Option(False, help="Allow model repos' custom code (off by default)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out from its last finished phase/epoch."),
    overwrite: bool = typer.Option(False, help="Delete an existing run in --out first."),
    export: bool = typer.Option(False, "--export", help="Export the student to ONNX (fp32 + INT8, + fp16 when trained on CUDA) after training (see `distill export`)."),
    allow_drift: bool = typer.Option(False, help="With --export: exit 0 even when an ONNX parity target is missed."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Co-finetune the teachers, distill a student, evaluate everything and write the run folder."""
    from .config import JOB_OPTIONS, RunConfig, parse_set_options
    from .pipeline import RESUMABLE_CHANGES, run as run_job

    try:
        vals, given = resolve_run_options(ctx, config)
        strategies = [vals["strategy"]] + [b for b in vals["baselines"] if b != vals["strategy"]]
        for strat, fields_ in parse_set_options(list(set_), strategies).items():
            vals["settings"].setdefault(strat, {}).update(fields_)
    except DistillError as e:
        _fail(e)
    cfg = RunConfig(**{k: v for k, v in vals.items() if k not in JOB_OPTIONS})
    resume, overwrite, export, allow_drift, verbose = (vals[k] for k in ("resume", "overwrite", "export",
                                                                         "allow_drift", "verbose"))
    # options a resumed run takes from the command line (or the job file) instead of its saved config
    resume_changes = RESUMABLE_CHANGES & given
    from . import distributed

    try:
        try:
            run_dir = run_job(cfg, resume=resume, overwrite=overwrite, verbose=verbose, resume_changes=resume_changes)
        finally:
            main = distributed.world().main
            distributed.shutdown()
        if not main:  # under a launcher rank 0 exports and reports
            return
        ok = True
        if export:
            from export.onnx_export import export_run

            trained_on = json.loads((run_dir / "report.json").read_text())["system"]["device"]
            ok = export_run(run_dir, fp16=trained_on.startswith("cuda"))  # a GPU run also gets the fp16 model
    except DistillError as e:
        _fail(e)
    typer.echo(f"done: {run_dir / 'report.md'}")
    if not ok and not allow_drift:
        typer.secho("export parity targets missed (see above); pass --allow-drift to accept", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


#: ``distill run`` parameters whose job-file / ``config.json`` key differs from the parameter name.
PARAM_KEYS = {"text_col": "text_cols", "teacher": "teachers", "set_": "settings"}


def resolve_run_options(ctx: typer.Context, config: Path | None) -> tuple[dict, set[str]]:
    """``distill run``'s options as config keys: the defaults, overridden by the job file ``config``,
    overridden by the flags given on the command line (``--set`` is merged by the caller).

    Returns:
        ``(values by config key, keys set by the file or the command line)``.

    Raises:
        DistillError: an invalid job file (see :func:`distill.config.load_job_file`).
    """
    from .config import load_job_file

    vals, given = {}, set()
    for name, value in ctx.params.items():
        if name == "config":
            continue
        key = PARAM_KEYS.get(name, name)
        vals[key] = value
        # typer may ship its own copy of click, so the parameter source is compared by name
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE":
            given.add(key)
    vals["baselines"] = [b.strip() for b in vals["baselines"].split(",") if b.strip()]
    file_vals = load_job_file(config) if config else {}
    for key, value in file_vals.items():
        if key not in given:
            vals[key] = value
    vals["settings"] = {k: dict(v) for k, v in (file_vals.get("settings") or {}).items()}
    for key in ("text_cols", "teachers", "baselines", "unlabeled"):
        vals[key] = list(vals[key])
    if isinstance(vals.get("weak_teacher_margin"), str):
        raw = vals["weak_teacher_margin"].strip().lower()
        try:
            vals["weak_teacher_margin"] = None if raw in ("none", "off", "") else float(raw)
        except ValueError:
            raise DistillError(f"--weak-teacher-margin {raw!r}: give a number of macro-F1 points or 'none'.") from None
    for key in ("out", "teacher_store"):
        vals[key] = str(vals[key]) if vals[key] is not None else None
    return vals, given | set(file_vals)


@app.command("strategies")
def strategies_cmd(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the registered distillation strategies with their settings (type, default, range) and papers."""
    import json as _json

    from .strategies import STRATEGIES, settings_table
    from .textcnn import TextCNN, TextCNNSettings

    entries = [(n, c.__doc__, c.paper, settings_table(n)) for n, c in STRATEGIES.items()]
    entries.append(("textcnn", "The TextCNN student (--student textcnn), not a strategy: " + (TextCNN.__doc__ or ""),
                    "paper 003 (METHODS.md section 3)", settings_table(TextCNNSettings)))
    if as_json:
        typer.echo(_json.dumps({n: {"paper": paper, "doc": (doc or "").strip().split("\n")[0], "settings": rows}
                                for n, doc, paper, rows in entries}, indent=2, default=str))
        return
    typer.echo("Set any of these with --set STRATEGY.FIELD=VALUE (repeatable) on `distill run`.\n")
    for name, doc, paper, rows in entries:
        typer.secho(name, bold=True)
        summary = " ".join((doc or "").strip().split("\n\n")[0].split())
        typer.echo(f"  {summary}")
        typer.echo(f"  paper: {paper}")
        width = max([len(f"{name}.{r['name']}") for r in rows], default=0)
        for r in rows:
            rng = f" [{r['range']}]" if r["range"] else ""
            typer.echo(f"    {name + '.' + r['name']:<{width}}  default {r['default']!s:<6} {r['type']}{rng}: "
                       f"{r['description']}")
        if not rows:
            typer.echo("    (no settings)")
        typer.echo("")


@app.command()
def predict(
    ctx: typer.Context,
    model_path: Path = typer.Argument(..., metavar="RUN_OR_EXPORT", help="A run folder (uses its export/ when present, else student/), an export folder or a student folder."),
    file: Path = typer.Argument(..., help="Texts to label: CSV/TSV/JSONL, a .txt file with one text per line, or any --data format of `distill run`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .csv or .jsonl (default: FILE's name + .predictions.csv, next to FILE)."),
    text_col: List[str] = typer.Option(["text"], "--text-col", help="Text column(s) (default: the run's --text-col when RUN_OR_EXPORT is a run folder)."),
    label_col: str = typer.Option("label", "--label-col", help="Label column; when present, accuracy and macro-F1 are printed ('none' to ignore it)."),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Id column copied to the output (default: row number)."),
    data_format: str = typer.Option("auto", "--format", help="auto | lines | folder | agnews | mind | csv | tsv | jsonl."),
    model: str = typer.Option("int8", help="Exported model: int8 | fp32 | fp16."),
    backend: str = typer.Option("auto", help="auto (ONNX Runtime when exported, else PyTorch) | onnx | torch."),
    batch_size: int = typer.Option(64, min=1, help="Texts per model call."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)."),
) -> None:
    """Label every text of FILE with the student: label, score and every class probability per row."""
    import json as _json

    from .predict import predict_file

    run_cfg = model_path / "config.json"
    if getattr(ctx.get_parameter_source("text_col"), "name", None) != "COMMANDLINE" and run_cfg.is_file():
        text_col = _json.loads(run_cfg.read_text()).get("text_cols") or text_col
    out = out or file.with_name(file.name + ".predictions.csv")
    try:
        r = predict_file(model_path, file, out, model=model, backend=backend, batch_size=batch_size,
                         text_cols=list(text_col), label_col=None if label_col.lower() == "none" else label_col,
                         id_col=id_col, fmt=data_format, threads=threads)
    except DistillError as e:
        _fail(e)
    typer.echo(f"{r['texts']} texts in {r['seconds']:.2f} s ({r['texts_per_s']:.1f} texts/s) with {r['backend']} "
               f"-> {r['out']}")
    if "metrics" in r:
        m = r["metrics"]
        typer.echo(f"accuracy {m['accuracy']:.2f}  macro-F1 {m['macro_f1']:.2f}  (n={m['n']})")


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run folder (with student/)."),
    out: Optional[Path] = typer.Option(None, help="Export folder (default RUN_DIR/export); the export writes nothing else."),
    fp16: bool = typer.Option(False, "--fp16", help="Also write an fp16 model for the CUDA execution provider."),
    per_channel: Optional[bool] = typer.Option(None, "--per-channel/--per-tensor", help="INT8 weight quantization granularity (default: dynamic tries per-channel, then per-tensor; static uses per-channel)."),
    int8: str = typer.Option("auto", "--int8", help="INT8 method: dynamic (ranges per call) | static (QDQ, ranges calibrated on training texts) | auto (dynamic; static when dynamic misses the parity gate)."),
    calibration_size: int = typer.Option(256, "--calibration-size", min=1, help="Training texts of the run that calibrate static INT8 (MinMax)."),
    opset: int = typer.Option(17, help="ONNX opset."),
    allow_drift: bool = typer.Option(False, help="Exit 0 even when a parity target is missed."),
) -> None:
    """Export RUN_DIR's student to ONNX fp32 and INT8 (dynamic or static quantization), prove parity, write a size table."""
    try:
        from export.onnx_export import export_run
    except ImportError as e:  # pragma: no cover
        _fail(DistillError(f"the export extra is not installed ({e}); pip install -e .[export]"))
    try:
        ok = export_run(run_dir, out=out, fp16=fp16, per_channel=per_channel, opset=opset, int8=int8.strip().lower(),
                        calibration_size=calibration_size)
    except DistillError as e:
        _fail(e)
    if not ok and not allow_drift:
        typer.secho("parity targets missed (see above); pass --allow-drift to accept", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def serve(
    run_dir: Path = typer.Argument(..., help="A run folder with export/ (or an export folder)."),
    host: str = typer.Option("127.0.0.1", help="Bind address (use 0.0.0.0 only when you mean it)."),
    port: int = typer.Option(3000, help="Port."),
    model: str = typer.Option("int8", help="int8 | fp32 | fp16."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads."),
    allow_failed_parity: bool = typer.Option(False, "--allow-failed-parity", help="Serve an export whose manifest records a missed parity target (logged as a warning)."),
) -> None:
    """Serve RUN_DIR's exported student with BentoML (`bentoml serve serve.service:NewsClassifier`).

    Refuses an export whose manifest records a missed parity target unless --allow-failed-parity."""
    import logging

    from serve.runtime import check_export, parity_problem

    exp = run_dir / "export" if (run_dir / "export").is_dir() else run_dir
    mf = exp / "manifest.json"
    looks_exported = exp.is_dir() and (mf.is_file() or any(exp.glob("*.onnx")))  # else: half-written, see below
    if not looks_exported:
        _fail(DistillError(f"{run_dir}: no export found (manifest.json). Run `distill export {run_dir}` first."))
    try:  # the worker would fail the same way, with a traceback in the server log
        manifest = check_export(exp, model)[0]
    except (FileNotFoundError, ValueError) as e:
        _fail(DistillError(str(e).replace("RUN_DIR", str(run_dir))))
    problem = parity_problem(manifest)
    if problem and not allow_failed_parity:
        _fail(DistillError(f"{mf}: the export missed its parity targets: {problem}. Re-export it (e.g. "
                           f"`distill export {run_dir} --int8 static`) or pass --allow-failed-parity to serve it anyway "
                           "(its EXPORT.md shows the parity table)."))
    if problem:
        logging.getLogger("distill").warning("serving %s although it missed its parity targets: %s", exp, problem)
        typer.secho(f"warning: serving an export that missed its parity targets: {problem}", fg=typer.colors.YELLOW,
                    err=True)
    env = dict(os.environ, DISTILL_EXPORT_DIR=str(exp.resolve()), DISTILL_MODEL=model)
    if threads:
        env["DISTILL_INTRA_OP_THREADS"] = str(threads)
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "bentoml", "serve", "serve.service:NewsClassifier", "--host", host, "--port", str(port)]
    os.execvpe(cmd[0], cmd, dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))))


@app.command()
def bench(
    run_dir: Path = typer.Argument(..., help="A finished (and exported) run folder."),
    quick: bool = typer.Option(False, help="Fewer repetitions (smoke test)."),
    textbrewer: bool = typer.Option(True, help="Include the TextBrewer MultiTeacherDistiller comparison."),
    student_run: list[Path] = typer.Option([], "--student-run", help="Another finished run on the same test split whose student (PyTorch + its export) is measured beside this run's, e.g. the transformer student beside a TextCNN run. Repeatable."),
    reference: str = typer.Option("tfidf-lr,model2vec", "--reference", help="Reference models trained on the run's split and measured in the same loop (comma-separated: tfidf-lr, model2vec, setfit, frozen-lr; 'none' to skip)."),
    setfit_steps: int = typer.Option(100, min=1, help="SetFit contrastive steps when --reference has setfit (CPU cap)."),
) -> None:
    """Latency/size/accuracy/training-cost benchmark report (results.json, REPORT.md, PNG plots)."""
    try:
        from benchmarks.run_all import main as bench_main
    except ImportError as e:  # pragma: no cover
        _fail(DistillError(f"benchmarks are not available ({e})"))
    refs = () if reference.strip().lower() in ("", "none") else tuple(m.strip() for m in reference.split(",") if m.strip())
    try:
        bench_main(run_dir, quick=quick, textbrewer=textbrewer, extra_students=tuple(student_run), reference=refs,
                   setfit_steps=setfit_steps)
    except DistillError as e:
        _fail(e)


@app.command()
def reference(
    run_dir: Path = typer.Argument(..., help="A finished run folder."),
    models: str = typer.Option("tfidf-lr,frozen-lr,model2vec,setfit", help="Comma-separated reference models: tfidf-lr, frozen-lr (each frozen pre-trained teacher + logistic regression), model2vec, setfit."),
    setfit_steps: int = typer.Option(200, min=1, help="SetFit contrastive training steps (batch 16; a CPU cap, stated in the table)."),
    seeds: Optional[int] = typer.Option(None, min=1, help="Seeds of the seeded models (default: the run's --repeats)."),
) -> None:
    """Train what users would pick instead (TF-IDF + LR, frozen teacher embeddings + LR, model2vec, SetFit)
    on RUN_DIR's split and labelled texts; measure them like the student (RUN_DIR/reference/REFERENCE.md)."""
    try:
        from benchmarks.reference import run_reference
    except ImportError as e:  # pragma: no cover
        _fail(DistillError(f"reference models need the 'reference' extra ({e}); pip install -e .[reference]"))
    from .pipeline import setup_logging

    setup_logging()
    try:
        res = run_reference(run_dir, tuple(m.strip() for m in models.split(",") if m.strip()), setfit_steps, seeds)
    except DistillError as e:
        _fail(e)
    typer.echo((run_dir / "reference" / "REFERENCE.md").read_text())
    typer.echo(f"done: {run_dir / 'reference'} ({len(res['models'])} reference models)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ablate(
    ctx: typer.Context,
    config: Path = typer.Option(..., "--config", help="The job file (YAML or a run's config.json) whose MT-BERT student is ablated."),
    out: Path = typer.Option(..., "--out", help="Folder of the ablation: one run folder per row, ABLATION.md, ablation.json."),
    variants: str = typer.Option("no_hidden,no_distill,no_task,no_weighting,t1,t2,t4", help="Comma-separated rows beside the full job: no_hidden, no_distill, no_task, no_weighting, t1, t2, t4."),
    table_only: bool = typer.Option(False, help="Only rebuild ABLATION.md from the runs already finished."),
) -> None:
    """MT-BERT ablation (Fig. 5 / Fig. 4 shape): the job with the paper's loss (--set mtbert.preset=paper unless
    the job names a preset; the job's own mtbert settings win), then one run per changed loss setting, all on
    the same split, teachers and teacher-output cache; writes OUT/ABLATION.md. Other `distill run` flags after the
    options go to every run (e.g. --repeats 3)."""
    from benchmarks.ablation import run_ablation

    from .pipeline import setup_logging

    setup_logging()
    try:
        res = run_ablation(config, out, [v.strip() for v in variants.split(",") if v.strip()], list(ctx.args), table_only)
    except DistillError as e:
        _fail(e)
    typer.echo((out / "ABLATION.md").read_text())
    typer.echo(f"done: {out} ({len(res['rows'])} rows)")


def main() -> None:  # console script entry point
    app()


if __name__ == "__main__":
    main()
