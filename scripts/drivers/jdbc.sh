#!/usr/bin/env bash
# Installs what tests/drivers/jdbc needs: a JDK (javac and java; Debian's default-jdk-headless,
# only when javac is missing) and the PostgreSQL JDBC driver as Debian packages it
# (libpostgresql-jdbc-java, only when its jar is missing). Idempotent: does nothing when both
# are present. Exits non-zero when anything cannot be installed (e.g. the package mirror is
# unreachable), so the driver test fails instead of skipping.
# Prints the driver jar's path as its last line of output.
set -euo pipefail

jar=${PGTENANT_JDBC_JAR:-/usr/share/java/postgresql.jar}

packages=()
if ! command -v javac >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
    packages+=(default-jdk-headless)
fi
if [ ! -f "$jar" ]; then
    packages+=(libpostgresql-jdbc-java)
fi

if [ "${#packages[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "drivers/jdbc: missing ${packages[*]} and apt-get is not available" >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        echo "drivers/jdbc: not root and sudo is missing; cannot install ${packages[*]}" >&2
        exit 1
    fi
    # Two tests may call this at once (cargo runs tests in parallel): one installs, the
    # other waits and then finds everything present.
    exec 9>/tmp/pgtenant-drivers-jdbc.lock
    flock 9
    if [ ! -f "$jar" ] || ! command -v javac >/dev/null 2>&1; then
        echo "drivers/jdbc: installing ${packages[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        ${as_root[@]+"${as_root[@]}"} apt-get update >&2
        ${as_root[@]+"${as_root[@]}"} apt-get install -y --no-install-recommends "${packages[@]}" >&2
    fi
fi

if [ ! -f "$jar" ]; then
    echo "drivers/jdbc: $jar is still missing after installing libpostgresql-jdbc-java" >&2
    exit 1
fi
if ! command -v javac >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
    echo "drivers/jdbc: javac or java is still missing after installing a JDK" >&2
    exit 1
fi
echo "drivers/jdbc: $(java -version 2>&1 | head -n1), $(readlink -f "$jar")" >&2
echo "$jar"
