# The drone runtime image: onnxruntime, numpy, Pillow, cryptography and the aider_edge package (no torch, no
# mlflow), running `aider-edge predict` on a bundle. Multi-arch: python:3.11-slim is published for
# linux/amd64 and linux/arm64 (Raspberry Pi 4/5, Jetson), and uv.lock pins wheels for both.
#
#   docker buildx build --platform linux/arm64,linux/amd64 -t aider-edge-runtime .
#   docker run --rm -v "$PWD/dist/bundle:/bundle:ro" -v "$PWD/frames:/frames:ro" \
#     -v "$PWD/keys/bundle-signing.pub:/etc/aider-edge/trusted.pub:ro" aider-edge-runtime
#
# The runtime runs only bundles signed by the key at /etc/aider-edge/trusted.pub (the public half
# of `aider-edge keygen`'s pair; never the private key). `--target bundled` bakes dist/bundle and
# keys/bundle-signing.pub into the image instead of mounting them.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve nothing, install exactly the lock's base (edge) dependencies -----------------
FROM ${PYTHON_IMAGE} AS build
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The same uv as the Makefile's, so the lock is read the same way.
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY src ./src
# The base install only: no extras (torch, mlflow, dvc...), no dev group, a real (non-editable)
# install of the package. tests/test_edge_install.py runs this very line in a clean venv.
RUN uv sync --frozen --no-dev --no-editable --no-cache

# --- runtime: the venv alone, run by an unprivileged user --------------------------------------
FROM ${PYTHON_IMAGE} AS runtime-base
COPY --from=build /opt/venv /opt/venv
RUN groupadd --system --gid 10001 edge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin edge
ENV PATH=/opt/venv/bin:$PATH \
    AIDER_EDGE_TRUSTED_KEY=/etc/aider-edge/trusted.pub \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so the host's runtime can check it is not root without reading /etc/passwd.
USER 10001:10001
WORKDIR /frames

# --- bundled: the bundle and its trusted key copied in (`docker build --target bundled`) --------
FROM runtime-base AS bundled
COPY keys/bundle-signing.pub /etc/aider-edge/trusted.pub
COPY dist/bundle /bundle
ENTRYPOINT ["aider-edge", "predict", "--bundle", "/bundle"]
CMD ["/frames"]

# --- runtime (default): mount the bundle at /bundle and the frames at /frames -------------------
# bench instead of predict: docker run --entrypoint aider-edge ... bench --bundle /bundle
FROM runtime-base AS runtime
ENTRYPOINT ["aider-edge", "predict", "--bundle", "/bundle"]
CMD ["/frames"]
