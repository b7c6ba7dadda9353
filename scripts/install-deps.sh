#!/usr/bin/env bash
# Installs the PostgreSQL programs the tests and the demo run (initdb, pg_ctl, postgres, psql,
# pgbench) and the libclang the pg_query crate's build needs, if any is missing. Idempotent:
# does nothing when they are all present.
# Debian/Ubuntu only (apt-get); elsewhere, install PostgreSQL yourself or point
# PGTENANT_PG_BINDIR at the directory holding initdb.
set -euo pipefail

# Where pgtenant::cluster looks for the server programs, in the same order.
server_bin_dir() {
    if [ -n "${PGTENANT_PG_BINDIR:-}" ] && [ -x "$PGTENANT_PG_BINDIR/initdb" ]; then
        echo "$PGTENANT_PG_BINDIR"
        return 0
    fi
    local initdb
    if initdb=$(command -v initdb 2>/dev/null); then
        dirname "$(readlink -f "$initdb")"
        return 0
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
        return 0
    fi
    return 1
}

have() {
    local bin_dir=$1 program=$2
    [ -n "$bin_dir" ] && [ -x "$bin_dir/$program" ] && return 0
    command -v "$program" >/dev/null 2>&1
}

# --- Build dependency of the `pg_query` crate (the SQL guard's parser) ------------------------
# Its build script runs bindgen, which loads libclang at build time and needs clang's builtin
# headers (stddef.h, …): Debian's libclang-dev brings both. Installed only when missing.
have_libclang() {
    # clang-sys (used by bindgen) honours LIBCLANG_PATH first, then the usual directories.
    local lib_globs=(/usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so*
        /usr/lib/*/libclang.so* /usr/lib/*/libclang-[0-9]*.so*)
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        lib_globs=("$LIBCLANG_PATH"/libclang*.so* "${lib_globs[@]}")
    fi
    local found_lib=""
    for pattern in "${lib_globs[@]}"; do
        if compgen -G "$pattern" >/dev/null; then
            found_lib=yes
            break
        fi
    done
    [ -n "$found_lib" ] || return 1
    # clang's builtin headers (stddef.h, …), which bindgen's parse of pg_query.h includes.
    compgen -G "/usr/lib/llvm-*/lib/clang/*/include/stddef.h" >/dev/null ||
        compgen -G "/usr/lib/clang/*/include/stddef.h" >/dev/null
}

install_libclang() {
    if have_libclang; then
        echo "install-deps: libclang found (nothing to install for pg_query)"
        return 0
    fi
    echo "install-deps: libclang missing (the pg_query crate's bindgen needs it); installing libclang-dev"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: apt-get not available; install libclang (and clang's headers) yourself, or set LIBCLANG_PATH" >&2
        return 1
    fi
    local sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "install-deps: not root and sudo is missing; cannot install libclang-dev" >&2
            return 1
        fi
        sudo_cmd=(sudo)
    fi
    ${sudo_cmd[@]+"${sudo_cmd[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update
    ${sudo_cmd[@]+"${sudo_cmd[@]}"} env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends libclang-dev
    if ! have_libclang; then
        echo "install-deps: libclang still missing after installation" >&2
        return 1
    fi
}

# Not fatal: the PostgreSQL programs below are still worth installing; cargo says what is missing.
install_libclang || echo "install-deps: warning: without libclang, building pgtenant (pg_query) fails" >&2
# --- end of the pg_query block ------------------------------------------------------------------

missing=()
bin_dir=$(server_bin_dir || true)
for program in initdb pg_ctl postgres psql pgbench; do
    have "$bin_dir" "$program" || missing+=("$program")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: PostgreSQL programs found in ${bin_dir} (nothing to install)"
    exit 0
fi

echo "install-deps: missing ${missing[*]}; installing PostgreSQL with apt-get"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: apt-get not available; install PostgreSQL (server, client, pgbench) yourself" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "install-deps: not root and sudo is missing; cannot install ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
${as_root[@]+"${as_root[@]}"} apt-get update
${as_root[@]+"${as_root[@]}"} apt-get install -y --no-install-recommends postgresql postgresql-client postgresql-contrib

bin_dir=$(server_bin_dir || true)
for program in initdb pg_ctl postgres psql pgbench; do
    if ! have "$bin_dir" "$program"; then
        echo "install-deps: $program still missing after installation" >&2
        exit 1
    fi
done
echo "install-deps: PostgreSQL programs installed in ${bin_dir}"
