# Renders a template by replacing every ${NAME} with the environment variable NAME.
#
#   awk -f deploy/render.awk TEMPLATE > OUTPUT
#
# One renderer for deploy/local/stack.sh and the containers of docker-compose.yml, written in
# POSIX awk because envsubst is not everywhere (busybox images, macOS). Unlike envsubst it fails
# on a variable that is not set instead of rendering an empty string. Only ${NAME} with a letter
# or underscore first is a placeholder, so Prometheus relabel references such as ${1} pass through.
{
    line = $0
    out = ""
    while (match(line, /\$\{[A-Za-z_][A-Za-z0-9_]*\}/)) {
        name = substr(line, RSTART + 2, RLENGTH - 3)
        if (!(name in ENVIRON)) {
            printf("render.awk: %s:%d: ${%s} is not set\n", FILENAME, FNR, name) > "/dev/stderr"
            missing = 1
        }
        out = out substr(line, 1, RSTART - 1) ENVIRON[name]
        line = substr(line, RSTART + RLENGTH)
    }
    print out line
}

END {
    exit missing
}
