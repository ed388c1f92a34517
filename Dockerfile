# milterd: a milter daemon for Postfix and Sendmail, as a container (sidecar-friendly).
#
#   podman build --format docker -t milterd .        (docker format keeps the HEALTHCHECK)
#   podman run -d -p 127.0.0.1:8890:8890 -p 127.0.0.1:9900:9900 milterd
#
# Configuration comes from MILTERD_* environment variables, command-line options after `serve`, or a
# config file (-e MILTERD_CONFIG=/etc/milterd/milterd.yaml with a mounted volume). The milter listens on
# all interfaces inside the container (8890) and the admin endpoint (/healthz, /readyz, /metrics) on
# 9900. SIGTERM drains open sessions (up to MILTERD_DRAIN_TIMEOUT, default 30s) and exits 0: give the
# runtime a stop timeout above that (podman/docker stop -t 40, terminationGracePeriodSeconds: 40).
# The base image is pinned by tag; pin it by digest too where your registry allows (node:20-bookworm-slim@sha256:…).
ARG BASE=node:20-bookworm-slim

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
# Explicit @0.0.0.0: without a host, milterd binds the admin endpoint to loopback only, which a published
# port cannot reach.
ENV NODE_ENV=production \
    MILTERD_LISTEN=inet:8890@0.0.0.0 \
    MILTERD_ADMIN=inet:9900@0.0.0.0
WORKDIR /app
# /run/milterd: where a Unix socket goes when shared with an MTA container (mount a volume there).
RUN mkdir -p /run/milterd && chown node:node /run/milterd
COPY --from=build --chown=root:root /app/package.json ./
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist/src ./dist/src
COPY --chown=root:root bin ./bin
# Code is owned by root and read-only for the service user.
USER node
EXPOSE 8890 9900
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
  CMD ["node", "-e", "const m=/:(\\d+)/.exec(process.env.MILTERD_ADMIN||'');require('http').get({host:'127.0.0.1',port:m?m[1]:9900,path:'/healthz',timeout:2500},r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1)).on('timeout',()=>process.exit(1))"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "bin/milterd.js"]
CMD ["serve"]
