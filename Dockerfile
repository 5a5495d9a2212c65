# litestage container image: builds the release binaries on Debian 12 and
# ships them on a slim Debian 12 runtime with only the shared libraries they
# load. Build: docker build -t litestage .
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake --preset release -DLITESTAGE_BUILD_TESTS=OFF -DLITESTAGE_BUILD_BENCH=OFF \
 && cmake --build --preset release --target litestage_run

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libabsl20220623 libre2-9 libutf8proc2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 litestage
COPY --from=build /src/build/bin/litestage-run /usr/local/bin/litestage-run
USER litestage
ENTRYPOINT ["/usr/local/bin/litestage-run"]
CMD ["--help"]
