"""The resolved run configuration (written to ``config.json`` in every run folder)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .errors import DistillError
from .hub import MINILM, MPNET

#: Version of ``config.json``. A run folder stores only the strategy settings the user gave, so a changed
#: strategy default must not reach an older run when it resumes or is exported: :data:`OLD_DEFAULTS` pins
#: the defaults of each older version. 2 (distill 0.3): MT-BERT's ``w_hid`` default 1 -> 0.
CONFIG_VERSION = 2
#: Strategy defaults that a ``config.json`` of each older version left implicit: {version: {strategy: {field: value}}}.
OLD_DEFAULTS: dict[int, dict[str, dict]] = {1: {"mtbert": {"w_hid": 1.0}}}
#: Fields every saved ``config.json`` has (a JSON job file with all of them and no ``config_version`` is a
#: run folder's config written before version 2).
_SAVED_FIELDS = ("out", "seed", "teachers", "strategy", "baselines", "teacher_cache", "cache_max_mb")


@dataclass
class RunConfig:
    """Every setting of ``distill run``; defaults are the built-in BBC News job.

    Units: learning rates per step; ``max_length`` in tokens; ``cache_max_mb`` in MB (10^6 bytes).
    """

    # data
    data: str | None = None
    data_format: str = "auto"
    text_cols: list[str] = field(default_factory=lambda: ["text"])
    label_col: str = "label"
    id_col: str | None = None
    encoding: str = "utf-8"
    seed: int = 13
    dev_frac: float = 0.1
    test_frac: float = 0.2
    train_cap: int | None = None
    max_length: int = 64
    # transfer set (unlabelled texts the teachers label; see distill/transfer.py)
    unlabeled: list[str] = field(default_factory=list)  # --unlabeled files, in order
    unlabeled_from_train: int = 0
    augment: int = 0  # augmented copies per labelled and transfer text (distill/augment.py)
    # teachers
    teachers: list[str] = field(default_factory=lambda: [MINILM, MPNET])
    teacher_mode: str = "joint"
    teacher_epochs: int = 1
    teacher_patience: int | None = None  # early stopping on the teachers' mean dev macro-F1 (epochs)
    teacher_time_budget: float | None = None  # seconds of co-finetuning after which no new epoch starts
    teacher_lr: float = 5e-5
    teacher_train_layers: int = 2
    teacher_batch_size: int = 16
    head_lr: float = 1e-3
    head_dim: int | None = None
    pooling: str = "attentive"
    query_dim: int = 200
    trust_remote_code: bool = False
    # student
    student: str | None = None
    student_from: int | None = None
    student_layers: int | None = None
    student_head_init: str = "shared"
    student_init: str = "pretrained"  # pretrained | teacher (the co-finetuned source teacher's layers)
    strategy: str = "mtbert"
    baselines: list[str] = field(default_factory=lambda: ["nokd"])
    student_epochs: int = 3
    student_patience: int | None = None  # early stopping of every student on its dev macro-F1 (epochs)
    student_lr: float = 1e-4
    student_batch_size: int = 16
    repeats: int = 1
    # guards against distillation that hurts (distill/guards.py): drop a teacher this many dev macro-F1
    # points below the best one (None = keep all); pick the no-KD student when it is better on dev
    weak_teacher_margin: float | None = 3.0
    select_student: str = "dev"
    # per-strategy settings: {strategy: {field: value}} (``--set strategy.field=value``), validated
    # against each strategy's own ``Settings`` declaration (see ``distill strategies``)
    settings: dict = field(default_factory=dict)
    # optimisation / system
    weight_decay: float = 0.01
    warmup: float = 0.1
    eval_batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    teacher_cache: bool = True
    cache_max_mb: float = 4096.0
    out: str = "runs/default"
    teacher_store: str | None = None
    # the layout version of config.json (see CONFIG_VERSION); not an option
    config_version: int = CONFIG_VERSION

    @property
    def strategies(self) -> list[str]:
        """The main strategy followed by the baselines (without repeats)."""
        return [self.strategy] + [b for b in self.baselines if b != self.strategy]

    def strategy_settings(self, name: str):
        """Strategy ``name``'s validated ``Settings`` (defaults updated by ``settings[name]``).

        Raises:
            DistillError: unknown strategy, unknown setting or a value out of range.
        """
        from .strategies import resolve_settings

        return resolve_settings(name, self.settings.get(name))

    @property
    def textcnn(self) -> bool:
        """True when the student is paper 003's TextCNN (``--student textcnn``)."""
        return self.student == "textcnn"

    def textcnn_settings(self):
        """The TextCNN student's validated settings (``--set textcnn.FIELD=VALUE``).

        Raises:
            DistillError: unknown setting or a value out of range.
        """
        from .textcnn import textcnn_settings

        return textcnn_settings(self.settings.get("textcnn"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, pin_old_defaults: bool = True) -> "RunConfig":
        """Rebuild a config from ``config.json`` (older files' loss flags are moved into ``settings``, and,
        with ``pin_old_defaults``, the strategy defaults of their version are pinned, see :data:`OLD_DEFAULTS`;
        without it ``settings`` holds only what the user gave).

        Raises:
            DistillError: unknown fields, or a ``config_version`` newer than this distill's.
        """
        d = _migrate(dict(d), saved=pin_old_defaults)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise DistillError(f"config: unknown field(s) {unknown}.")
        return cls(**d)

    def validate(self) -> None:
        """Check ranges and choices; raises :class:`DistillError` naming the flag."""
        from .strategies import STRATEGIES

        if not self.teachers:
            raise DistillError("--teacher: give at least one teacher (hub id or local folder).")
        if self.teacher_mode not in ("joint", "independent"):
            raise DistillError("--teacher-mode must be 'joint' (MT-BERT co-finetuning) or 'independent'.")
        for name in self.strategies:
            if name not in STRATEGIES:
                raise DistillError(f"unknown strategy {name!r} (--strategy/--baselines); choose from {sorted(STRATEGIES)} "
                                   "(see `distill strategies`).")
        for name in self.settings:
            if name == "textcnn":
                if not self.textcnn:
                    raise DistillError("--set textcnn.*: TextCNN settings need --student textcnn.")
                self.textcnn_settings()
            elif getattr(self.strategy_settings(name), "augmented", False) and not self.augment:
                raise DistillError(f"--set {name}.augmented=true: the run makes no augmented copies to train on; "
                                   "add --augment N (or leave the setting out).")
        checks = [("max_length", self.max_length >= 8, "an integer >= 8 (tokens)"),
                  ("teacher_epochs", self.teacher_epochs >= 0, "an integer >= 0 (0 = no co-finetuning)"),
                  ("student_epochs", self.student_epochs >= 1, "an integer >= 1"),
                  ("repeats", self.repeats >= 1, "an integer >= 1 (seeds)"),
                  ("teacher_batch_size", self.teacher_batch_size >= 1, "an integer >= 1"),
                  ("student_batch_size", self.student_batch_size >= 1, "an integer >= 1"),
                  ("eval_batch_size", self.eval_batch_size >= 1, "an integer >= 1"),
                  ("train_cap", self.train_cap is None or self.train_cap >= 2, "an integer >= 2, or unset"),
                  ("student_layers", self.student_layers is None or self.student_layers >= 1, "an integer >= 1"),
                  ("unlabeled_from_train", self.unlabeled_from_train >= -1, "an integer >= 0, or -1 for all"),
                  ("augment", self.augment >= 0, "an integer >= 0 (copies per training text; 0 = none)"),
                  ("teacher_patience", self.teacher_patience is None or self.teacher_patience >= 1, "an integer >= 1"),
                  ("student_patience", self.student_patience is None or self.student_patience >= 1, "an integer >= 1"),
                  ("teacher_time_budget", self.teacher_time_budget is None or self.teacher_time_budget > 0,
                   "a number of seconds > 0"),
                  ("teacher_lr", self.teacher_lr > 0, "a number > 0"), ("student_lr", self.student_lr > 0, "a number > 0"),
                  ("head_lr", self.head_lr > 0, "a number > 0"),
                  ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
                  ("warmup", 0 <= self.warmup < 1, "a fraction in [0, 1)"),
                  ("teacher_train_layers", self.teacher_train_layers >= 0, "an integer >= 0 (0 = all layers)"),
                  ("cache_max_mb", self.cache_max_mb >= 0, "a number of MB >= 0"),
                  ("threads", self.threads is None or self.threads >= 1, "an integer >= 1, or unset for all cores")]
        for name, ok, valid in checks:
            if not ok:
                raise DistillError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: out of range; give {valid}.")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise DistillError("--device must be auto, cpu, cuda or cuda:N.")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise DistillError("--precision must be auto, fp32, bf16 or fp16.")
        if self.select_student not in ("dev", "strategy"):
            raise DistillError("--select-student must be 'dev' (no-KD student when it is better on dev) or 'strategy'.")
        if self.weak_teacher_margin is not None and self.weak_teacher_margin < 0:
            raise DistillError("--weak-teacher-margin must be >= 0 (macro-F1 points), or 'none' to keep every teacher.")
        if self.student_head_init not in ("shared", "random"):
            raise DistillError("--student-head-init must be 'shared' or 'random'.")
        if self.student_init not in ("pretrained", "teacher"):
            raise DistillError(f"--student-init {self.student_init!r}: give 'pretrained' (the source teacher's "
                               "pre-trained layers) or 'teacher' (its layers after co-finetuning).")
        if self.student_init == "teacher" and self.student is not None:
            raise DistillError(f"--student-init teacher: needs the default student (cut from a teacher), not "
                               f"--student {self.student}. Leave --student out, or use --student-init pretrained.")
        repeated = sorted({t for t in self.teachers if self.teachers.count(t) > 1})
        if repeated and self.teacher_mode == "joint":
            raise DistillError(f"--teacher {repeated[0]} is given more than once with --teacher-mode joint: the copies "
                               "would share one head and one data order and stay near-identical. Use --teacher-mode "
                               "independent (each copy gets its own head initialisation and dropout stream).")
        if self.student_from is not None and not 0 <= self.student_from < len(self.teachers):
            raise DistillError(f"--student-from {self.student_from}: out of range, there are {len(self.teachers)} teachers.")


#: ``config.json`` fields of version 0.1 runs that are now strategy settings: old name -> [(strategy, field)].
LEGACY_FIELDS = {
    "temperature": [("mtbert", "temperature")], "w_hid": [("mtbert", "w_hid")], "w_kd": [("mtbert", "w_kd")],
    "w_task": [("mtbert", "w_task")], "loss_weighting": [("mtbert", "loss_weighting")],
    "alpha": [("hinton", "alpha"), ("avg", "alpha")],
    "kd_temperature": [("hinton", "temperature"), ("avg", "temperature")], "kd_teacher": [("hinton", "teacher")],
}


def _migrate(d: dict, saved: bool) -> dict:
    """Move version 0.1 loss fields of a saved config into ``settings``, and read a single ``unlabeled``
    file (or null) as a list, so old runs still resume and job files may give one path. With ``saved``
    (``d`` is a run folder's ``config.json``), pin the strategy defaults of its ``config_version``
    (missing = 1) so that an older run resumes, and is reproduced, with the defaults it was trained with.

    Raises:
        DistillError: ``config_version`` is newer than this distill's :data:`CONFIG_VERSION`.
    """
    version = d.get("config_version", 1 if saved else CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise DistillError(f"config: config_version {version!r} is newer than this distill's ({CONFIG_VERSION}); "
                           "upgrade distill to read this run.")
    if "unlabeled" in d and not isinstance(d["unlabeled"], list):
        d["unlabeled"] = [] if d["unlabeled"] is None else [d["unlabeled"]]
    settings = {k: dict(v) for k, v in (d.get("settings") or {}).items()}
    for old, targets in LEGACY_FIELDS.items():
        if old in d:
            value = d.pop(old)
            for strat, fname in targets:
                settings.setdefault(strat, {}).setdefault(fname, value)
    for v in range(version, CONFIG_VERSION):
        for strat, old in OLD_DEFAULTS.get(v, {}).items():
            for fname, value in old.items():
                settings.setdefault(strat, {}).setdefault(fname, value)
    if settings:
        d["settings"] = settings
    if saved:
        d["config_version"] = CONFIG_VERSION
    return d


def parse_set_options(items: list[str], strategies: list[str]) -> dict:
    """``--set`` options -> ``{strategy: {field: value}}``.

    ``strategy.field=value`` sets one strategy's setting; ``field=value`` (no dot) sets it on every
    strategy of the run that declares ``field``. Values are JSON when they parse (numbers, true/false,
    null), else strings.

    Raises:
        DistillError: a malformed item, or a bare ``field`` that no strategy of the run declares.
    """
    from .strategies import STRATEGIES, parse_value

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DistillError(f"--set {item!r}: expected STRATEGY.FIELD=VALUE (e.g. camkd.alpha=0.7) or FIELD=VALUE.")
        v = parse_value(value)
        if "." in key:
            strat, fname = key.split(".", 1)
            out.setdefault(strat, {})[fname] = v
            continue
        owners = [s for s in strategies if s in STRATEGIES and key in STRATEGIES[s].Settings.model_fields]
        if not owners:
            raise DistillError(f"--set {item!r}: no strategy of this run ({', '.join(strategies)}) has a setting "
                               f"{key!r}; use STRATEGY.FIELD=VALUE (see `distill strategies`).")
        for strat in owners:
            out.setdefault(strat, {})[key] = v
    return out


#: Keys of a job file that are options of the invocation, not of the run (``distill run --help``).
JOB_OPTIONS = {"resume": bool, "overwrite": bool, "export": bool, "allow_drift": bool, "verbose": bool}


def _job_model():
    """The pydantic model of a job file: every :class:`RunConfig` field and :data:`JOB_OPTIONS`, no other key."""
    import typing

    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(RunConfig)
    spec = {f.name: (hints[f.name], None if f.default is MISSING else f.default) for f in fields(RunConfig)}
    spec.update({k: (t, False) for k, t in JOB_OPTIONS.items()})
    return create_model("JobFile", __config__=ConfigDict(extra="forbid", strict=False), **spec)


def load_job_file(path: str | Path) -> dict:
    """Read a job file for ``distill run --config``: YAML (or JSON, e.g. a run's own ``config.json``)
    mapping option names (``distill run`` options with ``_`` for ``-``, as in ``config.json``:
    ``teachers``, ``text_cols``, ``baselines`` as lists; ``settings: {strategy: {field: value}}``)
    to values, validated with pydantic.

    Returns:
        Only the keys present in the file (values converted to their types).

    Raises:
        DistillError: missing or unparsable file, a key that is not an option (with the closest
            one), or a value of the wrong type (naming the key and the file).
    """
    import difflib

    import yaml
    from pydantic import ValidationError

    p = Path(path)
    if not p.is_file():
        raise DistillError(f"--config {p}: file not found.")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DistillError(f"--config {p}: not valid YAML ({e}).") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DistillError(f"--config {p}: expected a mapping of option names to values, got {type(raw).__name__}.")
    saved = p.suffix == ".json" and "config_version" not in raw and all(k in raw for k in _SAVED_FIELDS)
    raw = _migrate(dict(raw), saved)
    if isinstance(raw.get("baselines"), str):  # the CLI's comma-separated form
        raw["baselines"] = [b.strip() for b in raw["baselines"].split(",") if b.strip()]
    model = _job_model()
    try:
        checked = model(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err.get("loc", ())) or "?"
        if err.get("type") == "extra_forbidden":
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else " See `distill run --help` (options, '-' as '_')."
            raise DistillError(f"{p}: unknown key {key!r}.{hint}") from None
        raise DistillError(f"{p}: key {key!r}: {err.get('msg')} (got {err.get('input')!r}).") from None
    return {k: getattr(checked, k) for k in raw}
