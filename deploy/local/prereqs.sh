# Installs what a fresh Debian 12 machine lacks for `make setup`, `make test` and `make demo`
# (as root): Debian's packages, Rust, Go and uv. Source it (`. deploy/local/prereqs.sh`): it puts
# the toolchains it finds or installs on the PATH of the calling shell. Idempotent.
# shellcheck shell=bash

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql)
command -v java >/dev/null || need+=(default-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v kcat >/dev/null || need+=(kcat)
command -v curl >/dev/null || need+=(curl)
command -v ps >/dev/null || need+=(procps)
command -v unzip >/dev/null || need+=(unzip)
# The data plane's librdkafka is built with OpenSSL (Kafka over TLS, SCRAM logins).
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
if ((${#need[@]})); then
    echo "== installing system packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# rustup installs cargo under ~/.cargo/bin, which a non-login shell may not have on its PATH.
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
    # Debian's plain rustc (1.63) is older than PyO3 needs (1.85); its rustc-web/cargo-web
    # packages (bookworm security updates) are new enough, and land in /usr/bin.
    echo "== installing Rust (Debian's rustc-web, cargo-web)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends rustc-web cargo-web >/dev/null
fi
# Go builds deploy/tools, which check docker-compose.yml (compose-go) and the Dockerfile
# (BuildKit); Debian's Go (1.19) is older than they need (1.24). Without one on the machine,
# the toolchain comes from the Go module proxy, which serves Go itself as a module.
GO_TOOLCHAIN=go1.24.13
[ -x /usr/local/go/bin/go ] && export PATH="/usr/local/go/bin:$PATH"
gohome="$HOME/.local/share/driftline/golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-amd64"
[ -x "$gohome/bin/go" ] && export PATH="$gohome/bin:$PATH"
if ! command -v go >/dev/null; then
    echo "== installing Go $GO_TOOLCHAIN from the Go module proxy"
    zip="$(mktemp --suffix=.zip)"
    curl -fsSL -o "$zip" "${GOPROXY_URL:-https://proxy.golang.org}/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-amd64.zip"
    mkdir -p "$HOME/.local/share/driftline"
    unzip -q -o "$zip" -d "$HOME/.local/share/driftline"
    rm -f "$zip"
    chmod +x "$gohome/bin/"* "$gohome/pkg/tool/"*/* 2>/dev/null || true
    export PATH="$gohome/bin:$PATH"
fi
if ! command -v uv >/dev/null && [ ! -x "$HOME/.local/bin/uv" ]; then
    echo "== installing uv"
    # Debian's own python3 refuses pip installs outside a virtual environment (PEP 668):
    # then uv goes into a private one, linked from ~/.local/bin, where the Makefile looks.
    if ! python3 -m pip install --quiet --user uv 2>/dev/null && ! python3 -m pip install --quiet uv 2>/dev/null; then
        command -v apt-get >/dev/null && ! python3 -c "import ensurepip" 2>/dev/null &&
            apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv "$HOME/.local/share/driftline/uv"
        "$HOME/.local/share/driftline/uv/bin/pip" install --quiet uv
        mkdir -p "$HOME/.local/bin"
        ln -sf "$HOME/.local/share/driftline/uv/bin/uv" "$HOME/.local/bin/uv"
    fi
fi
