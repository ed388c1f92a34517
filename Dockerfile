# milterd: a milter daemon for Postfix and Sendmail, as a container (sidecar-friendly).
#
#   podman build --format docker -t milterd .        (docker format keeps the HEALTHCHECK)
#   podman run -d -p 127.0.0.1:8890:8890 -p 127.0.0.1:9900:9900 milterd
#
# Configuration: the image's defaults are a config file, /etc/milterd/milterd.yaml (container/milterd.yaml:
# the milter on inet:8890@0.0.0.0, the admin endpoint /healthz, /readyz, /metrics on inet:9900@0.0.0.0),
# named by MILTERD_CONFIG. Mount your own file there (or point MILTERD_CONFIG at it) and its listen:/admin:
# apply; no MILTERD_LISTEN/MILTERD_ADMIN is set in the image, because the environment wins over a config
# file. MILTERD_* variables (-e) and options after `serve` still override any file field.
# SIGTERM drains open sessions (up to MILTERD_DRAIN_TIMEOUT, default 30s) and exits 0: give the
# runtime a stop timeout above that (podman/docker stop -t 40, terminationGracePeriodSeconds: 40).
# Node 24 (LTS). The base image is pinned by tag; pin it by digest too where your registry allows
# (node:24-bookworm-slim@sha256:…).
ARG BASE=node:24-bookworm-slim

FROM ${BASE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
# Compile the library and the CLI only (tests and benchmarks are not shipped), then drop dev dependencies.
RUN echo '{ "extends": "./tsconfig.json", "include": ["src/**/*.ts"] }' > tsconfig.image.json \
  && npx tsc -p tsconfig.image.json \
  && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${BASE}
ENV NODE_ENV=production \
    MILTERD_CONFIG=/etc/milterd/milterd.yaml
WORKDIR /app
# /run/milterd: where a Unix socket goes when shared with an MTA container (mount a volume there).
RUN mkdir -p /run/milterd && chown node:node /run/milterd
COPY --from=build --chown=root:root /app/package.json ./
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist/src ./dist/src
COPY --chown=root:root bin ./bin
COPY --chown=root:root container/milterd.yaml /etc/milterd/milterd.yaml
# Code is owned by root and read-only for the service user.
USER node
EXPOSE 8890 9900
# `milterd health` resolves the settings as `serve` does (environment, then MILTERD_CONFIG's file) and probes
# GET /healthz where the admin endpoint really is; with `admin: off` it negotiates on the milter socket
# instead. It cannot see options given after `serve`: put listen/admin in the file or the environment.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
  CMD ["node", "bin/milterd.js", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "bin/milterd.js"]
CMD ["serve"]
