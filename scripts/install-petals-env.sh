#!/usr/bin/env bash
# Build a virtualenv that can run a real Petals swarm and the `petals-node` front end (CPU only).
#
#   scripts/install-petals-env.sh <venv-dir>
#   <venv-dir>/bin/pip install --no-deps -e .      # then this project itself, without the gateway's deps
#   <venv-dir>/bin/python -m openai_proxy.petals_node --model <dir or hub name> --initial-peers <maddr> ...
#
# Why a script and not `pip install openai-proxy[petals]`: petals 2.2.0.post1's own pins cannot be installed
# (../shared/docs/petals-local-swarm.md, "Every error hit"):
#   * it pins hivemind==1.1.10.post2, an sdist whose setup.py needs pkg_resources and downloads p2pd from
#     GitHub at build time; 1.1.12 dropped the top-level names petals imports; so we take hivemind 1.1.11
#     (yanked, but an exact pin installs it) ...
#   * ... whose wheel ships a macOS arm64 p2pd by mistake: we overwrite it with the x86-64 ELF p2pd from the
#     hivemind 1.1.12 manylinux wheel (same p2pd.proto, same flags);
#   * it pins pydantic<2 while hivemind 1.1.11 needs pydantic>=2 (pydantic 2 works at run time);
#   * an unpinned accelerate is too new for the huggingface-hub that tokenizers 0.14 allows;
#   * numpy is held at 1.26.4, the version this stack was verified with (transformers 4.34 predates numpy 2).
# pip reports "dependency conflicts" for hivemind and pydantic: expected and harmless.
# Idempotent: rerunning it over a complete venv reinstalls nothing.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 <venv-dir>" >&2
    exit 2
fi
V=$1
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$V/bin/python" ] || "$PYTHON" -m venv "$V"
PIP=("$V/bin/python" -m pip --quiet)

"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install --no-deps petals==2.2.0.post1
"${PIP[@]}" install hivemind==1.1.11 transformers==4.34.1 'tokenizers>=0.14,<0.15' accelerate==0.24.1 \
    'huggingface-hub>=0.16.4,<1.0.0' speedtest-cli==2.1.3 tensor-parallel==1.0.23 peft==0.5.0 \
    bitsandbytes==0.41.1 humanfriendly 'async-timeout>=4.0.2' 'packaging>=20.9' 'sentencepiece>=0.1.99' \
    'safetensors>=0.3.1' 'Dijkstar>=2.6.0' 'cpufeature>=0.2.0' numpy==1.26.4 2>&1 \
    | { grep -v -E "dependency conflicts|requires (pydantic|hivemind)|^$" || true; }
# What `python -m openai_proxy.petals_node` imports besides the Petals stack (see the `petals` extra).
"${PIP[@]}" install 'starlette>=0.46' 'uvicorn>=0.34' 'websockets>=14' 'python-multipart>=0.0.20'

SITE=$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
P2PD="$SITE/hivemind/hivemind_cli/p2pd"
is_x86_64_elf() {  # ELF magic, 64-bit class, e_machine 62 (x86-64)
    "$V/bin/python" -c 'import sys; h = open(sys.argv[1], "rb").read(20)
sys.exit(0 if h[:5] == b"\x7fELF\x02" and int.from_bytes(h[18:20], "little") == 62 else 1)' "$1" 2>/dev/null
}
if ! is_x86_64_elf "$P2PD"; then
    TMPD=$(mktemp -d)
    trap 'rm -rf "$TMPD"' EXIT
    "${PIP[@]}" download --no-deps --only-binary :all: hivemind==1.1.12 -d "$TMPD"
    "$V/bin/python" - "$TMPD" "$P2PD" <<'EOF'
import glob, os, sys, zipfile
wheel, = glob.glob(os.path.join(sys.argv[1], "hivemind-1.1.12-*manylinux*x86_64.whl"))
with zipfile.ZipFile(wheel) as archive, open(sys.argv[2] + ".new", "wb") as out:
    out.write(archive.read("hivemind/hivemind_cli/p2pd"))
os.chmod(sys.argv[2] + ".new", 0o755)
os.replace(sys.argv[2] + ".new", sys.argv[2])
EOF
fi
is_x86_64_elf "$P2PD" || { echo "p2pd at $P2PD is not an x86-64 ELF binary" >&2; exit 1; }

# Fail here, not in a test: the stack must import as a whole.
"$V/bin/python" -W ignore -c 'import petals, transformers, starlette, uvicorn, multipart' >/dev/null
echo "petals environment ready in $V"
