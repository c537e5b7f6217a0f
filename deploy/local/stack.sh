#!/usr/bin/env bash
# The Driftline local stack without Docker: Kafka (KRaft), Redis and Prometheus, and Postgres on
# request, run as background processes of this machine.
#
#   deploy/local/stack.sh up [COMPONENT...]      start (idempotent) and wait until ready
#   deploy/local/stack.sh down [--purge] [COMPONENT...]
#                                                stop; --purge also deletes their data
#   deploy/local/stack.sh status [COMPONENT...]  one line each; exit 1 if any is down
#   deploy/local/stack.sh logs COMPONENT [-f]    last lines of its log; -f follows
#   deploy/local/stack.sh restart-kafka          stop and start the broker, keeping its data
#
# Components: kafka, redis, prometheus, postgres. `up` with no names starts kafka, redis and
# prometheus, plus postgres when STACK_WITH_POSTGRES=1; `up postgres` starts postgres alone.
# `down` with no names stops everything that runs.
#
# Ports and credentials come from .env in the repository root; a variable already set in the
# environment wins. Everything the stack writes lives in one run directory, .run/ in the
# repository root (DRIFTLINE_RUN_DIR overrides it): conf/ rendered configuration, pids/, logs/,
# and one data directory per component. The Kafka jars are resolved once with Maven into
# .cache/kafka/ (DRIFTLINE_CACHE_DIR overrides the .cache part).
#
# Tuning knobs (environment): STACK_WAIT_TIMEOUT (seconds a component may take to become ready,
# default 120), STACK_STOP_TIMEOUT (seconds between SIGTERM and SIGKILL, default 30),
# KAFKA_HEAP_OPTS, KAFKA_JVM_OPTS, DRIFTLINE_PYTHON (an interpreter with confluent-kafka),
# POSTGRES_BIN_DIR, POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB.
#
# Kafka over TLS and SASL, beside its plaintext port (unset by default): KAFKA_SSL_PORT (a mutual
# TLS listener) and KAFKA_SASL_SSL_PORT (SCRAM logins over TLS) need KAFKA_TLS_CERT_FILE,
# KAFKA_TLS_KEY_FILE (the broker's PEM certificate and unencrypted PKCS#8 key) and
# KAFKA_TLS_CA_FILE (the CA that clients' certificates must chain to); KAFKA_SASL_SSL_PORT also
# needs KAFKA_SCRAM_USER and KAFKA_SCRAM_PASSWORD, whose SCRAM-SHA-512 and SCRAM-SHA-256
# credentials are added when the broker's storage is formatted (the first `up`, or after
# `down --purge kafka`).
#
# Installs nothing: tools that are missing are named, and .ci/run installs them in CI.

set -euo pipefail

if ((BASH_VERSINFO[0] < 4)); then
    echo "stack.sh: needs bash 4 or newer (this is ${BASH_VERSION})" >&2
    exit 2
fi
# bash 5.2 expands & in ${var//pattern/replacement}; a rendered path must stay literal.
shopt -u patsub_replacement 2>/dev/null || true

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
DEPLOY_DIR="$REPO_ROOT/deploy"
ENV_FILE="${DRIFTLINE_ENV_FILE:-$REPO_ROOT/.env}"

ALL_COMPONENTS=(kafka redis prometheus postgres)
DEFAULT_COMPONENTS=(kafka redis prometheus)
# Stop order: readers of the others first.
STOP_ORDER=(prometheus postgres redis kafka)

# --- Output -------------------------------------------------------------------------------------

log() { printf 'stack: %s\n' "$*" >&2; }
die() {
    printf 'stack: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

# --- Configuration ------------------------------------------------------------------------------

# KEY=VALUE lines of .env, without running it as shell; the environment takes precedence.
load_env() {
    [[ -f $ENV_FILE ]] || die "no $ENV_FILE: it holds the ports of the stack"
    local line key value lineno=0
    while IFS= read -r line || [[ -n $line ]]; do
        lineno=$((lineno + 1))
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            die "$ENV_FILE:$lineno: not KEY=VALUE: $line"
        fi
        key=${BASH_REMATCH[2]}
        value=${BASH_REMATCH[3]}
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        [[ -v $key ]] || export "$key=$value"
    done <"$ENV_FILE"
}

absolute() {
    case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

configure() {
    load_env
    local required=(KAFKA_VERSION KAFKA_PORT KAFKA_CONTROLLER_PORT REDIS_PORT REDIS_USER
        REDIS_PASSWORD PROMETHEUS_PORT POSTGRES_PORT)
    local name
    for name in "${required[@]}"; do
        [[ -n ${!name:-} ]] || die "$ENV_FILE does not set $name"
    done

    RUN_DIR=$(absolute "${DRIFTLINE_RUN_DIR:-$REPO_ROOT/.run}")
    CACHE_DIR=$(absolute "${DRIFTLINE_CACHE_DIR:-$REPO_ROOT/.cache}")
    CONF_DIR="$RUN_DIR/conf"
    PID_DIR="$RUN_DIR/pids"
    LOG_DIR="$RUN_DIR/logs"
    KAFKA_LIBS="$CACHE_DIR/kafka/kafka-$KAFKA_VERSION/libs"
    WAIT_TIMEOUT=${STACK_WAIT_TIMEOUT:-120}
    STOP_TIMEOUT=${STACK_STOP_TIMEOUT:-30}

    # Rendered into the templates next to the .env values.
    export KAFKA_DATA_DIR="$RUN_DIR/kafka/data"
    export REDIS_DATA_DIR="$RUN_DIR/redis/data"
    PROMETHEUS_DATA_DIR="$RUN_DIR/prometheus/data"
    PG_DIR="$RUN_DIR/postgres"
    PG_DATA_DIR="$PG_DIR/data"
    PG_SOCKET_DIR="$PG_DIR/socket"
    POSTGRES_USER=${POSTGRES_USER:-driftline}
    POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-driftline-dev}
    POSTGRES_DB=${POSTGRES_DB:-driftline}
    kafka_listeners
    # Prometheus scrapes the services where they run: here, on loopback.
    for name in INGESTION FEATURES REGISTRY INFERENCE DRIFT TRAINER; do
        local host_var="${name}_HOST"
        [[ -n ${!host_var:-} ]] || export "$host_var=127.0.0.1"
    done
}

# The broker's listeners (rendered into server.properties.template): PLAINTEXT and CONTROLLER, and
# SSL and SASL_SSL when their ports are set; KAFKA_SECURE tells start_kafka to add their settings.
kafka_listeners() {
    local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT" map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    KAFKA_SECURE=0
    if [[ -n ${KAFKA_SSL_PORT:-} ]]; then
        listeners+=",SSL://127.0.0.1:$KAFKA_SSL_PORT" map+=",SSL:SSL" KAFKA_SECURE=1
    fi
    if [[ -n ${KAFKA_SASL_SSL_PORT:-} ]]; then
        listeners+=",SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT" map+=",SASL_SSL:SASL_SSL" KAFKA_SECURE=1
    fi
    export KAFKA_ADVERTISED_LISTENERS=$listeners KAFKA_PROTOCOL_MAP=$map
    export KAFKA_LISTENERS="$listeners,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
}

# A PEM file as one properties value: its lines joined with \n, which Kafka reads as line breaks.
pem_property() { awk 'NF { printf "%s\\n", $0 }' "$1"; }

# Marks a directory as a run directory of this script, so that `down --purge` never deletes a
# directory that DRIFTLINE_RUN_DIR points at by mistake.
RUN_DIR_MARKER=.driftline-run-dir

make_run_dir() {
    mkdir -p "$RUN_DIR" "$CONF_DIR" "$PID_DIR" "$LOG_DIR"
    touch "$RUN_DIR/$RUN_DIR_MARKER"
}

# One command at a time changes a run directory: two concurrent `up`s would both format Kafka
# and start two brokers. Held until this script exits (flock is util-linux; without it, none).
lock_run_dir() {
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p "$RUN_DIR"
    exec 9>"$RUN_DIR/.lock"
    if ! flock -n 9; then
        log "waiting for another stack.sh working on $RUN_DIR"
        flock 9
    fi
}

# render TEMPLATE OUTPUT: ${NAME} placeholders from the environment; fails on an unset one.
render() {
    mkdir -p "$(dirname "$2")"
    awk -f "$DEPLOY_DIR/render.awk" "$1" >"$2.tmp" || die "cannot render $1"
    mv "$2.tmp" "$2"
}

require_commands() {
    local missing=() cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) ||
        die "missing on PATH: ${missing[*]} (install them, e.g. as .ci/run does; this script installs nothing)"
}

# --- Processes ----------------------------------------------------------------------------------

pid_file() { printf '%s/%s.pid\n' "$PID_DIR" "$1"; }
log_file() { printf '%s/%s.log\n' "$LOG_DIR" "$1"; }

# A word of the command line that tells this component's process from an unrelated one that
# reused its pid.
process_marker() {
    case $1 in
    kafka) echo "kafka.Kafka" ;;
    redis) echo "redis-server" ;;
    prometheus) echo "prometheus" ;;
    postgres) echo "postgres" ;;
    esac
}

component_port() {
    case $1 in
    kafka) echo "$KAFKA_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    prometheus) echo "$PROMETHEUS_PORT" ;;
    postgres) echo "$POSTGRES_PORT" ;;
    esac
}

# The pid of a running component, or nothing (and status 1).
running_pid() {
    local file pid
    file=$(pid_file "$1")
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    ps -ww -p "$pid" -o args= 2>/dev/null | grep -q -- "$(process_marker "$1")" || return 1
    echo "$pid"
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# launch NAME COMMAND...: run COMMAND in the background, detached from this terminal's session,
# with output appended to the component's log; the process writes its own pid before exec, so
# the pid file names the server itself and not a wrapper.
launch() {
    local name=$1 pidfile logfile
    shift
    pidfile=$(pid_file "$name")
    logfile=$(log_file "$name")
    rm -f "$pidfile"
    # Checked last thing before the start (a first Kafka start downloads for a minute first): a
    # readiness probe would otherwise take a stranger on the port for our server.
    local port
    for port in $(component_ports "$name"); do
        if port_in_use "$port"; then
            die "port $port, wanted by $name, is taken by a process this stack did not start"
        fi
    done
    printf '\n===== %s: starting %s =====\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$name" >>"$logfile"
    local detach=()
    if command -v setsid >/dev/null 2>&1; then
        detach=(setsid)
    fi
    # shellcheck disable=SC2016 # $$ and $@ belong to the inner sh.
    # 9>&-: the server must not inherit the run-directory lock, or it would hold it forever.
    nohup ${detach[@]+"${detach[@]}"} sh -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
        >>"$logfile" 2>&1 </dev/null 9>&- &
    local waited=0
    until [[ -s $pidfile ]]; do
        ((waited++ < 50)) || die "$name did not start; see $logfile"
        sleep 0.1
    done
}

# wait_ready NAME: poll the component's readiness check until it passes, its process dies or
# WAIT_TIMEOUT passes.
wait_ready() {
    local name=$1 started=$SECONDS
    while true; do
        if ! running_pid "$name" >/dev/null; then
            log "$name exited during startup; last lines of $(log_file "$name"):"
            tail -n 30 "$(log_file "$name")" >&2 || true
            exit 1
        fi
        if "ready_$name"; then
            log "$name ready on 127.0.0.1:$(component_port "$name") ($((SECONDS - started))s)"
            return 0
        fi
        if ((SECONDS - started >= WAIT_TIMEOUT)); then
            log "$name not ready after ${WAIT_TIMEOUT}s; last lines of $(log_file "$name"):"
            tail -n 30 "$(log_file "$name")" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

# stop NAME: the component's shutdown signal, then SIGKILL after STOP_TIMEOUT.
stop() {
    local name=$1 pid signal=TERM
    # SIGTERM asks postgres for a "smart" shutdown that waits for every client to leave.
    if [[ $name == postgres ]]; then
        signal=INT
    fi
    if pid=$(running_pid "$name"); then
        log "stopping $name (pid $pid)"
        kill -s "$signal" "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= deadline)); then
                log "$name still running after ${STOP_TIMEOUT}s; sending SIGKILL"
                kill -s KILL "$pid" 2>/dev/null || true
                sleep 0.5
                break
            fi
            sleep 0.2
        done
        log "$name stopped"
    fi
    rm -f "$(pid_file "$name")"
}

# Every port a component binds (component_port is the one clients use).
component_ports() {
    case $1 in
    kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT ${KAFKA_SSL_PORT:-} ${KAFKA_SASL_SSL_PORT:-}" ;;
    *) component_port "$1" ;;
    esac
}

start() {
    local name=$1 pid
    if pid=$(running_pid "$name"); then
        # Still wait: an interrupted `up` may have left it started but not yet ready.
        log "$name already running (pid $pid)"
        wait_ready "$name"
        return 0
    fi
    rm -f "$(pid_file "$name")"
    "start_$name"
    wait_ready "$name"
    if declare -F "after_ready_$name" >/dev/null; then
        "after_ready_$name"
    fi
}

# --- Kafka --------------------------------------------------------------------------------------

python_bin() {
    local candidate
    for candidate in "${DRIFTLINE_PYTHON:-}" "$REPO_ROOT/.venv/bin/python" python3; do
        [[ -n $candidate ]] || continue
        if "$candidate" -c 'import confluent_kafka' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    die "no Python with confluent-kafka (tried DRIFTLINE_PYTHON, .venv, python3); run uv sync"
}

require_kafka() {
    require_commands java
    [[ -f $KAFKA_LIBS/.complete ]] || require_commands mvn
    PYTHON=$(python_bin)
}

# The broker's classpath, resolved once per version from Maven Central into the cache.
ensure_kafka_libs() {
    [[ -f $KAFKA_LIBS/.complete ]] && return 0
    local target tmp download_log
    target=$(dirname "$KAFKA_LIBS")
    tmp="$target.partial.$$"
    download_log=$(log_file kafka-download)
    log "resolving Kafka $KAFKA_VERSION jars with Maven into $target (once)"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -q -B -Dstyle.color=never -f "$DEPLOY_DIR/kafka/pom.xml" \
        -DKAFKA_VERSION="$KAFKA_VERSION" -DincludeScope=runtime \
        dependency:copy-dependencies -DoutputDirectory="$tmp/libs" >"$download_log" 2>&1; then
        rm -rf "$tmp"
        tail -n 30 "$download_log" >&2 || true
        die "Maven could not resolve Kafka $KAFKA_VERSION; see $download_log"
    fi
    ls "$tmp/libs"/kafka_2.13-*.jar >/dev/null 2>&1 || die "no kafka_2.13 jar in the Maven output"
    touch "$tmp/libs/.complete"
    rm -rf "$target"
    mv "$tmp" "$target"
}

# The JVM command line for the broker and its tools, into the array KAFKA_JAVA. -Xmx512m fits a
# 2-core, few-GB CI machine; the G1 flags are those of Kafka's own kafka-run-class.sh.
kafka_java_command() {
    local opts=()
    read -r -a opts <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} ${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}"
    KAFKA_JAVA=(java "${opts[@]}" -Dlog4j2.configurationFile="$DEPLOY_DIR/kafka/log4j2.yaml"
        -cp "$KAFKA_LIBS/*")
}

start_kafka() {
    ensure_kafka_libs
    kafka_java_command
    local props="$CONF_DIR/kafka/server.properties"
    render "$DEPLOY_DIR/kafka/server.properties.template" "$props"
    local scram=() name
    if ((KAFKA_SECURE)); then
        for name in KAFKA_TLS_CERT_FILE KAFKA_TLS_KEY_FILE KAFKA_TLS_CA_FILE; do
            [[ -n ${!name:-} && -r ${!name} ]] ||
                die "KAFKA_SSL_PORT and KAFKA_SASL_SSL_PORT need $name, a readable PEM file"
        done
        [[ -z ${KAFKA_SASL_SSL_PORT:-} || (-n ${KAFKA_SCRAM_USER:-} && -n ${KAFKA_SCRAM_PASSWORD:-}) ]] ||
            die "KAFKA_SASL_SSL_PORT needs KAFKA_SCRAM_USER and KAFKA_SCRAM_PASSWORD"
        chmod 600 "$props" # before it holds the broker's private key
        KAFKA_TLS_CERT_PEM=$(pem_property "$KAFKA_TLS_CERT_FILE") \
            KAFKA_TLS_KEY_PEM=$(pem_property "$KAFKA_TLS_KEY_FILE") \
            awk -f "$DEPLOY_DIR/render.awk" "$DEPLOY_DIR/kafka/security.properties.template" >>"$props" ||
            die "cannot render security.properties.template"
        if [[ -n ${KAFKA_SASL_SSL_PORT:-} ]]; then
            local mechanism
            for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
                scram+=(--add-scram "$mechanism=[name=$KAFKA_SCRAM_USER,password=$KAFKA_SCRAM_PASSWORD]")
            done
        fi
    fi
    mkdir -p "$KAFKA_DATA_DIR"
    if [[ ! -f $KAFKA_DATA_DIR/meta.properties ]]; then
        local id_file="$RUN_DIR/kafka/cluster.id" format_log
        format_log=$(log_file kafka-format)
        if [[ ! -s $id_file ]]; then
            # stdout carries log4j lines too; the id is the line that is one base64url UUID.
            "${KAFKA_JAVA[@]}" kafka.tools.StorageTool random-uuid 2>>"$format_log" |
                grep -E '^[A-Za-z0-9_-]{22}$' | tail -n 1 >"$id_file.tmp" || true
            [[ -s $id_file.tmp ]] || die "StorageTool random-uuid failed; see $format_log"
            mv "$id_file.tmp" "$id_file"
        fi
        log "formatting Kafka storage (cluster id $(<"$id_file"))"
        # --standalone: a one-voter dynamic KRaft quorum (controller.quorum.bootstrap.servers).
        "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format --standalone \
            --cluster-id "$(<"$id_file")" --config "$props" "${scram[@]}" >>"$format_log" 2>&1 ||
            die "StorageTool format failed; see $format_log"
    fi
    log "starting kafka $KAFKA_VERSION"
    launch kafka "${KAFKA_JAVA[@]}" kafka.Kafka "$props"
}

# A metadata request, not an open port, answered by the cluster formatted here: see wait_kafka.py.
ready_kafka() {
    local cluster_id
    cluster_id=$(sed -n 's/^cluster\.id=//p' "$KAFKA_DATA_DIR/meta.properties" 2>/dev/null)
    "$PYTHON" "$SCRIPT_DIR/wait_kafka.py" --bootstrap "127.0.0.1:$KAFKA_PORT" --timeout 5 \
        --libs "$KAFKA_LIBS" ${cluster_id:+--cluster-id "$cluster_id"} \
        >"$RUN_DIR/kafka/ready.txt" 2>/dev/null || return 1
    log "$(<"$RUN_DIR/kafka/ready.txt")"
}

# --- Redis --------------------------------------------------------------------------------------

require_redis() { require_commands redis-server redis-cli; }

start_redis() {
    local conf="$CONF_DIR/redis/redis.conf"
    mkdir -p "$REDIS_DATA_DIR" "$CONF_DIR/redis"
    (umask 077 && render "$DEPLOY_DIR/redis/redis.conf.template" "$conf")
    log "starting redis"
    launch redis redis-server "$conf"
}

# PING as the ACL user; the default user is off, so an unauthenticated PING proves nothing.
ready_redis() {
    local reply
    reply=$(REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p "$REDIS_PORT" \
        --user "$REDIS_USER" --no-auth-warning ping 2>/dev/null) || return 1
    [[ $reply == PONG ]]
}

# --- Prometheus ---------------------------------------------------------------------------------

require_prometheus() { require_commands prometheus curl; }

start_prometheus() {
    local conf_dir="$CONF_DIR/prometheus"
    mkdir -p "$PROMETHEUS_DATA_DIR" "$conf_dir"
    render "$DEPLOY_DIR/prometheus/prometheus.yml.template" "$conf_dir/prometheus.yml"
    # rule_files in the config is relative to it; point rules/ at the tracked directory so a rule
    # edit needs only a reload (POST /-/reload), not a re-render.
    ln -sfn "$DEPLOY_DIR/prometheus/rules" "$conf_dir/rules"
    log "starting prometheus"
    launch prometheus prometheus \
        --config.file="$conf_dir/prometheus.yml" \
        --storage.tsdb.path="$PROMETHEUS_DATA_DIR" \
        --storage.tsdb.retention.time=7d \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
        --web.enable-lifecycle
}

ready_prometheus() {
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" 2>/dev/null
}

# --- Postgres -----------------------------------------------------------------------------------

# The first directory that holds the server binaries: POSTGRES_BIN_DIR, where initdb on PATH
# really lives, Debian's per-version directories (kept off PATH), then pg_config's answer.
pg_bin_dir() {
    local candidates=() dir tool found
    [[ -n ${POSTGRES_BIN_DIR:-} ]] && candidates+=("$POSTGRES_BIN_DIR")
    if command -v initdb >/dev/null 2>&1; then
        candidates+=("$(dirname "$(readlink -f "$(command -v initdb)" 2>/dev/null || command -v initdb)")")
    fi
    # shellcheck disable=SC2012 # version-sorted directory names without spaces
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        candidates+=("$dir")
    done
    if command -v pg_config >/dev/null 2>&1; then
        candidates+=("$(pg_config --bindir)")
    fi
    for dir in ${candidates[@]+"${candidates[@]}"}; do
        found=1
        for tool in initdb postgres psql pg_isready; do
            [[ -x $dir/$tool ]] || found=0
        done
        if ((found)); then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Postgres refuses to run as root: as root, run its binaries as the postgres user.
as_pg() {
    if ((EUID == 0)); then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

require_postgres() {
    PG_BIN=$(pg_bin_dir) ||
        die "no directory with initdb, postgres, psql and pg_isready found (set POSTGRES_BIN_DIR)"
    if ((EUID == 0)); then
        require_commands setpriv
        id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to run the server"
    fi
    # A Unix socket path may not exceed 107 bytes.
    ((${#PG_SOCKET_DIR} + 20 < 107)) ||
        die "$PG_SOCKET_DIR is too long for a Unix socket; set a shorter DRIFTLINE_RUN_DIR"
}

start_postgres() {
    mkdir -p "$PG_DIR" "$PG_SOCKET_DIR"
    if ((EUID == 0)); then
        chown postgres: "$PG_DIR" "$PG_SOCKET_DIR"
        as_pg test -w "$PG_DIR" ||
            die "user postgres cannot write $PG_DIR (is a parent directory closed to it?)"
    fi
    if [[ ! -f $PG_DATA_DIR/PG_VERSION ]]; then
        log "initialising a postgres cluster in $PG_DATA_DIR"
        rm -rf "$PG_DATA_DIR"
        # Local (socket) connections trust the OS user, which is what the bootstrap below uses;
        # TCP connections need a password.
        as_pg "$PG_BIN/initdb" -D "$PG_DATA_DIR" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >>"$(log_file postgres-init)" 2>&1 ||
            die "initdb failed; see $(log_file postgres-init)"
    fi
    log "starting postgres"
    # setpriv execs rather than forks, so the pid that launch() records is the server's.
    local drop=()
    if ((EUID == 0)); then
        drop=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    fi
    launch postgres ${drop[@]+"${drop[@]}"} "$PG_BIN/postgres" -D "$PG_DATA_DIR" \
        -c listen_addresses=127.0.0.1 -c port="$POSTGRES_PORT" \
        -c unix_socket_directories="$PG_SOCKET_DIR"
}

ready_postgres() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT" -t 2 >/dev/null 2>&1
}

# The application's role and database, created once.
after_ready_postgres() {
    local psql=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$POSTGRES_PORT"
        -U postgres -d postgres -tA)
    local password=${POSTGRES_PASSWORD//\'/\'\'}
    if [[ -z $("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$POSTGRES_USER'") ]]; then
        "${psql[@]}" -c "CREATE ROLE \"$POSTGRES_USER\" LOGIN PASSWORD '$password'" >/dev/null
        log "created postgres role $POSTGRES_USER"
    fi
    if [[ -z $("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$POSTGRES_DB'") ]]; then
        "${psql[@]}" -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" >/dev/null
        log "created postgres database $POSTGRES_DB"
    fi
}

# --- Commands -----------------------------------------------------------------------------------

valid_component() {
    local c
    for c in "${ALL_COMPONENTS[@]}"; do
        [[ $1 == "$c" ]] && return 0
    done
    die "unknown component '$1' (one of: ${ALL_COMPONENTS[*]})"
}

# The components a command names, or its default set.
selected=()
select_components() {
    selected=()
    local c
    if (($# > 0)); then
        for c in "$@"; do
            valid_component "$c"
            selected+=("$c")
        done
    else
        selected=("${DEFAULT_COMPONENTS[@]}")
        if [[ ${STACK_WITH_POSTGRES:-0} == 1 ]]; then
            selected+=(postgres)
        fi
    fi
}

cmd_up() {
    select_components "$@"
    local started=$SECONDS c
    # Every missing tool is reported before anything starts.
    for c in "${selected[@]}"; do
        "require_$c"
    done
    make_run_dir
    for c in "${selected[@]}"; do
        start "$c"
    done
    log "up: ${selected[*]} in $((SECONDS - started))s (run dir $RUN_DIR)"
}

cmd_down() {
    local purge=0 names=() c
    for c in "$@"; do
        case $c in
        --purge) purge=1 ;;
        -*) die "down: unknown option $c" ;;
        *) names+=("$c") ;;
        esac
    done
    if ((${#names[@]} == 0)); then
        names=("${STOP_ORDER[@]}")
    else
        for c in "${names[@]}"; do valid_component "$c"; done
    fi
    [[ -d $RUN_DIR ]] || return 0
    for c in "${STOP_ORDER[@]}"; do
        if [[ " ${names[*]} " == *" $c "* ]]; then
            stop "$c"
        fi
    done
    ((purge)) || return 0
    [[ -f $RUN_DIR/$RUN_DIR_MARKER ]] ||
        die "$RUN_DIR has no $RUN_DIR_MARKER: not deleting a directory this script did not create"
    for c in "${names[@]}"; do
        log "purging $c data"
        rm -rf "${RUN_DIR:?}/$c" "${CONF_DIR:?}/$c" "$(log_file "$c")"
    done
    if ((${#names[@]} == ${#STOP_ORDER[@]})); then
        # Only what this script made: services keep their own state under the run directory
        # too (the registry's default data_dir is .run/registry), and that is not ours to delete.
        rm -rf "${CONF_DIR:?}" "${PID_DIR:?}" "${LOG_DIR:?}" "${RUN_DIR:?}/.lock" "${RUN_DIR:?}/$RUN_DIR_MARKER"
        rmdir "$RUN_DIR" 2>/dev/null || log "kept $RUN_DIR: it holds data of other programs"
    fi
}

cmd_status() {
    local names=("$@") c pid down=0
    if ((${#names[@]} == 0)); then
        names=("${DEFAULT_COMPONENTS[@]}")
        # Postgres is optional: shown when asked for or when it was started and not stopped.
        if [[ ${STACK_WITH_POSTGRES:-0} == 1 || -f $(pid_file postgres) ]]; then
            names+=(postgres)
        fi
    fi
    for c in "${names[@]}"; do
        valid_component "$c"
        if pid=$(running_pid "$c"); then
            printf '%-11s running  pid %-8s port %s\n' "$c" "$pid" "$(component_port "$c")"
        else
            printf '%-11s stopped  pid %-8s port %s\n' "$c" "-" "$(component_port "$c")"
            down=1
        fi
    done
    return "$down"
}

cmd_logs() {
    (($# >= 1)) || die "usage: stack.sh logs COMPONENT [-f]"
    local name=$1 file
    [[ $name == kafka-* || $name == postgres-* ]] || valid_component "$name"
    file=$(log_file "$name")
    [[ -f $file ]] || die "no log for $name at $file"
    if [[ ${2:-} == -f ]]; then
        exec tail -n 100 -F "$file"
    fi
    tail -n "${STACK_LOG_LINES:-200}" "$file"
}

cmd_restart_kafka() {
    require_kafka
    make_run_dir
    stop kafka
    start kafka
}

main() {
    (($# >= 1)) || usage
    local command=$1
    shift
    case $command in
    -h | --help | help) usage ;;
    esac
    configure
    case $command in
    up | restart-kafka) lock_run_dir ;;
    down) if [[ -d $RUN_DIR ]]; then lock_run_dir; fi ;;
    esac
    case $command in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    restart-kafka) cmd_restart_kafka "$@" ;;
    *) usage ;;
    esac
}

main "$@"
