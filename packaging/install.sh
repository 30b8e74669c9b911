#!/bin/sh
# shellcheck shell=sh
#
# Outrider agent installer.
#
#   curl -sSf https://SERVER/install.sh | sh -s -- --token TOKEN --root-sha256 PIN [options]
#
# PIN is the SHA-256 of the update root, printed by `outrider keys init`.
#
# Downloads the outrider-agent stub, checks it against the release manifest
# signed by the update root, writes agent.toml and root.json, and installs a
# service that starts the agent at boot. Run it again to change settings
# (idempotent); run it with --uninstall to stop, deregister and remove
# everything it installed.
#
# Nothing is installed unless every check passes: the script fails closed
# when it cannot verify (neither OpenSSL 3 nor python to check Ed25519, a
# bad signature, a stub that does not match the manifest). Everything runs
# inside `main`, called on the last line, so a truncated download does
# nothing.

set -u

# The server serving this file replaces the placeholder with its own URL.
DEFAULT_SERVER='@OUTRIDER_SERVER_URL@'

# Prefix of every signed metadata message (outrider-signing's DOMAIN_PREFIX).
DOMAIN_PREFIX='outrider-signed-metadata-v1'
# Largest root.json or manifest accepted (outrider-signing's MAX_METADATA_BYTES).
MAX_METADATA_BYTES=1048576
# Largest stub binary accepted, whatever the manifest says.
MAX_STUB_BYTES=134217728
# DER header of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
ED25519_SPKI_PREFIX='302a300506032b6570032100'
# Exit code of the stub for a configuration error (it must not be restarted).
EXIT_USAGE=64
# Most root versions a re-run walks from the installed root to the served one.
MAX_ROOT_CHAIN=1000
# The system user a root install runs the stub and every plugin as.
AGENT_USER=outrider
# Seconds to wait for the agent to stop (and say goodbye) on uninstall.
STOP_WAIT_SECS=60

usage() {
    cat <<'EOF'
Outrider agent installer

usage: install.sh --token TOKEN --root-sha256 PIN [options]
       install.sh --uninstall [--prefix DIR]

options:
  --token TOKEN          enrollment token (outrider tokens create)
  --server URL           server base URL, https:// (http:// only to this
                         host); default: the server this came from. Give it
                         again for each further node of the server: the
                         first is server_url (and serves this install), the
                         others go to extra_server_urls
  --channel NAME         release channel to follow (default: stable)
  --tags a,b             labels for this host, used to assign checks
  --prefix DIR           install everything under DIR (non-root installs;
                         default for a normal user: $HOME/.outrider)
  --root-sha256 HEX      pin the update root: refuse a root.json with another
                         hash (outrider keys init prints it); without it a
                         first install trusts the served root, and a re-run
                         the root already installed
  --service-manager M    auto (default), systemd, openrc, sysv, or none
                         (none: start the agent as a background process)
  --no-service           install but start nothing and install no service
  --allow-adhoc          let this host run ad-hoc commands sent by the
                         server (outrider run --script); refused without it
  --uninstall            stop the agent (it deregisters), remove everything
  -h, --help             this text
EOF
}

say() {
    printf 'outrider: %s\n' "$*" >&2
}

die() {
    printf 'outrider: error: %s\n' "$*" >&2
    exit 1
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "this installer needs '$1'; install it and run again"
}

# --- downloads -----------------------------------------------------------

# download URL FILE MAX_BYTES: fetches URL into FILE, refusing more than
# MAX_BYTES (checked while streaming by curl, and again after).
download() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --proto "$protos" --proto-redir "$protos" --max-filesize "$3" -o "$2" "$1" ||
            die "cannot download $1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1" || die "cannot download $1"
    else
        die "this installer needs curl or wget"
    fi
    _size=$(wc -c <"$2" | tr -d ' ')
    [ "$_size" -le "$3" ] || die "$1 is larger than the $3 bytes allowed"
}

sha256_of() {
    openssl dgst -sha256 -r "$1" | awk '{ print $1 }'
}

# --- JSON ----------------------------------------------------------------

# json_flatten FILE: prints one line per scalar, "<path>\t<raw value>", with
# paths like .targets.x86_64-linux.stub.sha256 or .signatures[0].keyid.
# Strings keep their JSON escapes; the values read here are hex, numbers and
# base64, which have none. Malformed JSON prints an error and fails.
json_flatten() {
    LC_ALL=C awk '
        function fail(msg) { printf "malformed JSON: %s at byte %d\n", msg, pos > "/dev/stderr"; bad = 1; exit 1 }
        function ws() { while (pos <= n && index(" \t\r\n", substr(s, pos, 1)) > 0) pos++ }
        function str(   out, chunk) {
            pos++; out = ""
            while (pos <= n) {
                chunk = substr(s, pos)
                if (match(chunk, /^[^"\\]+/)) { out = out substr(chunk, 1, RLENGTH); pos += RLENGTH; continue }
                if (substr(s, pos, 1) == "\\") { out = out substr(s, pos, 2); pos += 2; continue }
                pos++; return out
            }
            fail("unterminated string")
        }
        function value(path,   c, key, i) {
            ws(); c = substr(s, pos, 1)
            if (c == "{") {
                pos++; ws()
                if (substr(s, pos, 1) == "}") { pos++; return }
                for (;;) {
                    ws(); if (substr(s, pos, 1) != "\"") fail("expected a key")
                    key = str(); ws()
                    if (substr(s, pos, 1) != ":") fail("expected :")
                    pos++; value(path "." key); ws()
                    c = substr(s, pos, 1); pos++
                    if (c == "}") return
                    if (c != ",") fail("expected , or }")
                }
            }
            if (c == "[") {
                pos++; ws(); i = 0
                if (substr(s, pos, 1) == "]") { pos++; return }
                for (;;) {
                    value(path "[" i "]"); i++; ws()
                    c = substr(s, pos, 1); pos++
                    if (c == "]") return
                    if (c != ",") fail("expected , or ]")
                }
            }
            if (c == "\"") { printf "%s\t%s\n", path, str(); return }
            if (match(substr(s, pos), /^[-+0-9.eE]+|^true|^false|^null/)) {
                printf "%s\t%s\n", path, substr(s, pos, RLENGTH); pos += RLENGTH; return
            }
            fail("unexpected character")
        }
        { s = s $0 "\n" }
        END {
            if (bad) exit 1
            n = length(s); pos = 1; value(""); ws()
            if (pos <= n) fail("trailing data")
        }
    ' "$1"
}

# json_get FLAT PATH: the value at PATH in a flattened document, or nothing.
json_get() {
    awk -F '\t' -v p="$2" '$1 == p { print $2; exit }' "$1"
}

# --- Ed25519 -------------------------------------------------------------

# hex_to_file HEX FILE: writes the bytes HEX spells.
hex_to_file() {
    # printf %b understands \0ddd (octal); awk turns each hex pair into one.
    _esc=$(printf '%s' "$1" | LC_ALL=C awk '{
        for (i = 1; i < length($0); i += 2) {
            b = 0
            for (j = 0; j < 2; j++) b = b * 16 + index("0123456789abcdef", substr($0, i + j, 1)) - 1
            printf "\\0%03o", b
        }
    }')
    printf '%b' "$_esc" >"$2"
}

is_hex() {
    # is_hex VALUE LENGTH
    [ "${#1}" -eq "$2" ] || return 1
    case $1 in *[!0-9a-f]*) return 1 ;; esac
    return 0
}

# The fallback verifier where openssl cannot verify Ed25519 (OpenSSL 1.1.1
# has no `pkeyutl -rawin`: Debian 11, Ubuntu 20.04, RHEL 8; Amazon Linux 2
# ships 1.0.2): RFC 8032 section 5.1.7 in pure Python, for python3 and
# python2.7. As strict as the agent's own verifier (ed25519-dalek's
# verify_strict in signing/src/envelope.rs): S must be below L (no
# malleable signatures), A and R must decode canonically and not be of
# small order, and the recomputed R must equal the signature's bytes.
# Arguments: PUBKEY_HEX MESSAGE_FILE SIG_HEX; exit 0 valid, 1 invalid.
# No single quote may appear inside it.
ED25519_PY='import sys, hashlib, binascii
p = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
d = -121665 * pow(121666, p - 2, p) % p
I = pow(2, (p - 1) // 4, p)
def num(b):
    return sum(c << (8 * i) for i, c in enumerate(bytearray(b)))
def add(P, Q):
    a = (P[1] - P[0]) * (Q[1] - Q[0]) % p
    b = (P[1] + P[0]) * (Q[1] + Q[0]) % p
    c = 2 * P[3] * Q[3] * d % p
    e = 2 * P[2] * Q[2] % p
    E, F, G, H = b - a, e - c, e + c, b + a
    return (E * F % p, G * H % p, F * G % p, E * H % p)
def mul(s, P):
    Q = (0, 1, 1, 0)
    while s:
        if s & 1:
            Q = add(Q, P)
        P = add(P, P)
        s >>= 1
    return Q
def enc(P):
    z = pow(P[2], p - 2, p)
    return P[1] * z % p | (P[0] * z % p & 1) << 255
def dec(n):
    y, sign = n & (2 ** 255 - 1), n >> 255
    if y >= p:
        return None
    x2 = (y * y - 1) * pow(d * y * y + 1, p - 2, p) % p
    x = pow(x2, (p + 3) // 8, p)
    if (x * x - x2) % p:
        x = x * I % p
    if (x * x - x2) % p or (x == 0 and sign):
        return None
    if x & 1 != sign:
        x = p - x
    return (x, y, 1, x * y % p)
def small(P):
    Q = mul(8, P)
    return Q[0] % p == 0 and (Q[1] - Q[2]) % p == 0
def verify(pub, msg, sig):
    A, R, s = dec(num(pub)), dec(num(sig[:32])), num(sig[32:])
    if A is None or R is None or s >= L or small(A) or small(R):
        return False
    k = num(hashlib.sha512(sig[:32] + pub + msg).digest()) % L
    B = dec(4 * pow(5, p - 2, p) % p)
    nA = (p - A[0], A[1], A[2], p - A[3])
    return enc(add(mul(s, B), mul(k, nA))) == num(sig[:32])
pub, sig = binascii.unhexlify(sys.argv[1]), binascii.unhexlify(sys.argv[3])
f = open(sys.argv[2], "rb")
msg = f.read()
f.close()
sys.exit(0 if len(pub) == 32 and len(sig) == 64 and verify(pub, msg, sig) else 1)'

# Which program checks signatures: "openssl", or the name of the python
# that runs ED25519_PY. Set by choose_verifier.
verifier=''

# ed25519_verify PUBKEY_HEX MESSAGE_FILE SIG_HEX: succeeds when the signature
# is valid. openssl gets the key as a DER SubjectPublicKeyInfo.
ed25519_verify() {
    is_hex "$1" 64 || return 1
    is_hex "$3" 128 || return 1
    if [ "$verifier" = openssl ]; then
        hex_to_file "$ED25519_SPKI_PREFIX$1" "$tmp/key.der"
        hex_to_file "$3" "$tmp/sig.bin"
        openssl pkeyutl -verify -pubin -keyform DER -inkey "$tmp/key.der" -rawin \
            -in "$2" -sigfile "$tmp/sig.bin" >/dev/null 2>&1
    else
        "$verifier" -c "$ED25519_PY" "$1" "$2" "$3" >/dev/null 2>&1
    fi
}

# verifier_works: the current verifier accepts RFC 8032 section 7.1, test 2
# (the one-byte message 0x72) and rejects the same signature corrupted.
verifier_works() {
    _pk=3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c
    _sig=92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00
    _bad=92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c01
    printf 'r' >"$tmp/rfc8032"
    ed25519_verify "$_pk" "$tmp/rfc8032" "$_sig" && ! ed25519_verify "$_pk" "$tmp/rfc8032" "$_bad"
}

# choose_verifier: openssl when it verifies Ed25519 (OpenSSL 3), else the
# first python that runs ED25519_PY correctly; says which. Fails closed
# when neither works. openssl itself stays required: it hashes and decodes
# base64, which every version does.
choose_verifier() {
    need_cmd openssl
    verifier=openssl
    if verifier_works; then
        say "verifying signatures with $(openssl version 2>&1 | awk '{ print $1, $2 }')"
        return 0
    fi
    for verifier in python3 python2.7 python2 python; do
        command -v "$verifier" >/dev/null 2>&1 || continue
        if verifier_works; then
            say "verifying signatures with $verifier (RFC 8032 in the installer; $(openssl version 2>&1 | awk '{ print $1, $2 }') cannot verify Ed25519)"
            return 0
        fi
    done
    die "cannot verify Ed25519 signatures: this openssl ($(openssl version 2>&1 | awk '{ print $1, $2 }')) cannot (OpenSSL 3 can) and no working python3 or python2.7 was found; install either and run again. Nothing was installed"
}

# verify_envelope ENVELOPE TYPE KEYS THRESHOLD NAME: checks that at least
# THRESHOLD distinct keys of KEYS (lines "keyid pubhex") signed the envelope
# as TYPE, and writes its payload to ENVELOPE.payload. Key ids are checked to
# be the SHA-256 of their key; a key counts once however often it signed.
verify_envelope() {
    json_flatten "$1" >"$1.flat" || die "$5 is not valid JSON"
    _b64=$(json_get "$1.flat" .payload)
    [ -n "$_b64" ] || die "$5 has no payload"
    printf '%s' "$_b64" | openssl base64 -d -A >"$1.payload" 2>/dev/null ||
        die "$5 has a payload that is not base64"
    { printf '%s\n%s\n' "$DOMAIN_PREFIX" "$2"; cat "$1.payload"; } >"$1.msg"
    _valid=' '
    _i=0
    while :; do
        _kid=$(json_get "$1.flat" ".signatures[$_i].keyid")
        _sig=$(json_get "$1.flat" ".signatures[$_i].sig")
        [ -n "$_kid" ] || break
        _i=$((_i + 1))
        case $_valid in *" $_kid "*) continue ;; esac
        _pub=$(awk -v k="$_kid" '$1 == k { print $2; exit }' "$3")
        [ -n "$_pub" ] || continue
        hex_to_file "$_pub" "$tmp/pub.bin"
        [ "$(sha256_of "$tmp/pub.bin")" = "$_kid" ] || continue
        if ed25519_verify "$_pub" "$1.msg" "$_sig"; then
            _valid="$_valid$_kid "
        fi
    done
    _count=$(printf '%s' "$_valid" | wc -w | tr -d ' ')
    [ "$_count" -ge "$4" ] ||
        die "$5 is signed by $_count trusted key(s) but $4 are required; it may have been tampered with, nothing was installed"
}

# check_server_url: $server must be https://, or http:// to this host
# (127.0.0.0/8, ::1, localhost): the agent sends its enrollment token and
# its results to this URL, and nothing else may read them on the way. Sets
# `protos`, the only protocol downloads (and their redirects) may use.
check_server_url() {
    case $server in
        @*) die "--server is required: this copy of install.sh was not served by an Outrider server" ;;
        https://*) _rest=${server#https://}; protos='=https' ;;
        http://*) _rest=${server#http://}; protos='=http' ;;
        *) die "--server must be an https:// URL, not '$server'" ;;
    esac
    server=${server%/}
    _authority=${_rest%%[/?#]*}
    case $_authority in
        '') die "--server has no host name: '$server'" ;;
        *@*) die "--server must not carry a user name or password: '$server'" ;;
    esac
    [ "$protos" = '=http' ] || return 0
    case $_authority in
        \[*\]) _host=$_authority ;;
        \[*\]:*) _host=${_authority%:*} ;;
        *) _host=${_authority%:*} ;;
    esac
    case $_host in
        localhost | '[::1]') return 0 ;;
        127.*)
            printf '%s\n' "$_host" | awk -F. '
                NF != 4 { exit 1 }
                { for (i = 1; i <= 4; i++) if ($i !~ /^[0-9]+$/ || $i + 0 > 255) exit 1 }
            ' && return 0
            ;;
    esac
    die "--server must be an https:// URL; plain http:// is allowed only to this host (127.0.0.0/8, ::1, localhost), not '$server'"
}

# check_extra_servers: each further --server (the server's other nodes,
# written to extra_server_urls) passes check_server_url, and none repeats
# another (the agent refuses a list with a URL twice).
check_extra_servers() {
    _primary=$server
    _protos=$protos
    _checked=''
    # Split on spaces only: no pathname expansion of `[::1]` and the like.
    set -f
    for server in $extra_servers; do
        check_server_url
        case " $_primary $_checked " in
            *" $server "*) die "--server $server is given twice" ;;
        esac
        _checked="${_checked:+$_checked }$server"
    done
    set +f
    server=$_primary
    protos=$_protos
    extra_servers=$_checked
}

# read_root FILE NAME: checks that FILE is a root envelope signed by a
# threshold of its own root keys; leaves its payload flattened in
# FILE.payload.flat and its root keys ("keyid pubhex" lines) in FILE.keys.
read_root() {
    json_flatten "$1" >"$1.flat" || die "$2 is not valid JSON"
    printf '%s' "$(json_get "$1.flat" .payload)" | openssl base64 -d -A >"$1.payload" 2>/dev/null ||
        die "$2 has a payload that is not base64"
    json_flatten "$1.payload" >"$1.payload.flat" || die "$2 has a payload that is not valid JSON"
    [ "$(json_get "$1.payload.flat" .type)" = root ] || die "$2 is not an update root"
    awk -F '\t' '$1 ~ /^\.root_keys\./ { sub(/^\.root_keys\./, "", $1); print $1, $2 }' \
        "$1.payload.flat" >"$1.keys"
    # A threshold of 0 would accept no signatures at all.
    case $(json_get "$1.payload.flat" .root_threshold)/$(json_get "$1.payload.flat" .release_threshold) in
        *[!0-9/]* | /* | */ | 0* | */0*) die "$2 has no valid root and release thresholds" ;;
    esac
    verify_envelope "$1" root "$1.keys" "$(json_get "$1.payload.flat" .root_threshold)" "$2"
}

# follow_root_chain INSTALLED: a re-run on a host that already trusts a
# root (INSTALLED, its root.json) accepts the served root only when it is
# that root, or reached from it through the signed chain the stub walks
# too (roots/N.json, each signed by a threshold of the previous version's
# root keys as well as its own, docs/updates.md): a server with other keys
# cannot make a re-run trust it. Called with root_version at least the
# installed version (older roots are refused before).
follow_root_chain() {
    cp "$1" "$tmp/chain.json" || die "cannot read $1"
    read_root "$tmp/chain.json" "the installed $1"
    _v=$(json_get "$tmp/chain.json.payload.flat" .version)
    case $_v in '' | *[!0-9]*) die "the installed $1 has no valid version" ;; esac
    [ $((root_version - _v)) -le "$MAX_ROOT_CHAIN" ] ||
        die "root.json from $server is $((root_version - _v)) versions ahead of the installed one, more than the $MAX_ROOT_CHAIN walked; nothing was installed"
    _prev=$tmp/chain.json
    while [ "$_v" -lt "$root_version" ]; do
        _v=$((_v + 1))
        _next=$tmp/chain.$_v.json
        download "$updates/roots/$_v.json" "$_next" "$MAX_METADATA_BYTES"
        read_root "$_next" "root version $_v from $server"
        [ "$(json_get "$_next.payload.flat" .version)" = "$_v" ] ||
            die "roots/$_v.json from $server is not root version $_v; nothing was installed"
        verify_envelope "$_next" root "$_prev.keys" "$(json_get "$_prev.payload.flat" .root_threshold)" \
            "root version $_v from $server (checked against the keys of version $((_v - 1)))"
        _prev=$_next
    done
    cmp -s "$_prev" "$tmp/root.json" ||
        die "root.json from $server is not the update root this host trusts ($1) nor signed by it: another server or another root. If the root was replaced on purpose, pin the new one with --root-sha256. Nothing was installed"
    say "the update root from $server is the one this host trusts ($1) or signed by it"
}

# --- paths and services --------------------------------------------------

set_layout() {
    if [ -n "$prefix" ]; then
        config_dir="$prefix/etc"
        data_dir="$prefix"
        log_dir="$prefix/log"
        stub_args="--prefix $prefix"
        system=false
    else
        config_dir=/etc/outrider
        data_dir=/opt/outrider
        log_dir=/var/log/outrider
        stub_args=""
        system=true
    fi
    bin="$data_dir/bin/outrider-agent"
    pid_file="$data_dir/outrider-agent.pid"
    record="$data_dir/install.record"
}

# trusted_root_version: the highest update root version this host already
# trusts (its root.json, and the stub's record of every root it walked to
# in state.json), or nothing on a fresh host.
trusted_root_version() {
    _best=''
    if [ -f "$config_dir/root.json" ] &&
        json_flatten "$config_dir/root.json" >"$tmp/old.flat" 2>/dev/null &&
        printf '%s' "$(json_get "$tmp/old.flat" .payload)" | openssl base64 -d -A >"$tmp/old.payload" 2>/dev/null &&
        json_flatten "$tmp/old.payload" >"$tmp/old.payload.flat" 2>/dev/null; then
        _best=$(json_get "$tmp/old.payload.flat" .version)
    fi
    _seen=''
    if [ -f "$data_dir/state.json" ] && json_flatten "$data_dir/state.json" >"$tmp/state.flat" 2>/dev/null; then
        _seen=$(json_get "$tmp/state.flat" .root_version)
    fi
    case "$_best" in '' | *[!0-9]*) _best='' ;; esac
    case "$_seen" in '' | *[!0-9]*) _seen='' ;; esac
    if [ -n "$_seen" ] && { [ -z "$_best" ] || [ "$_seen" -gt "$_best" ]; }; then
        _best=$_seen
    fi
    printf '%s' "$_best"
}

# Where the service managers live. OUTRIDER_TEST_SERVICE_ROOT moves the
# three directories under a fake tree, so the end-to-end tests can check
# the detection and the files written for every manager without touching
# the host's services (tests/tests/e2e/services.rs); an install leaves it
# unset. The tools (systemctl, openrc-run, rc-update, update-rc.d) are
# found on PATH as always.
set_service_paths() {
    _service_root=${OUTRIDER_TEST_SERVICE_ROOT:-}
    systemd_run_dir="$_service_root/run/systemd/system"
    systemd_system_dir="$_service_root/etc/systemd/system"
    init_d="$_service_root/etc/init.d"
}

# The rules, in order: systemd when it is running (its runtime directory
# exists, which is systemd's own test, sd_booted(3)) and systemctl is
# there; OpenRC when its tools are; SysV when /etc/init.d exists; else
# none (a background process). A --prefix install only uses a user's
# systemd.
detect_service_manager() {
    if [ "$system" = true ]; then
        if [ -d "$systemd_run_dir" ] && command -v systemctl >/dev/null 2>&1; then
            echo systemd
        elif command -v openrc-run >/dev/null 2>&1 && command -v rc-update >/dev/null 2>&1; then
            echo openrc
        elif [ -d "$init_d" ]; then
            echo sysv
        else
            echo none
        fi
    elif command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; then
        echo systemd
    else
        echo none
    fi
}

systemd_unit_path() {
    if [ "$system" = true ]; then
        echo "$systemd_system_dir/outrider-agent.service"
    else
        echo "${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user/outrider-agent.service"
    fi
}

systemctl_() {
    if [ "$system" = true ]; then systemctl "$@"; else systemctl --user "$@"; fi
}

# The unit: starts at boot, restarts the stub when it fails (but not on a
# configuration error), stops it with SIGTERM so it says goodbye and the
# server shows it deregistered, not down.
write_systemd_unit() {
    _unit=$(systemd_unit_path)
    mkdir -p "$(dirname "$_unit")"
    if [ "$system" = true ]; then _target=multi-user.target; else _target=default.target; fi
    # A system unit runs as the agent's user in a sandbox: the system
    # read-only but for the agent's own paths, a private /tmp, homes
    # read-only, and no way back to privileges (setuid plugins included).
    _sandbox=''
    if [ "$system" = true ]; then
        _sandbox="User=$AGENT_USER
Group=$agent_group
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=$config_dir $data_dir $log_dir
PrivateTmp=yes
ProtectHome=read-only
"
    fi
    cat >"$_unit.tmp" <<EOF
[Unit]
Description=Outrider monitoring agent
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$bin $stub_args
ExecReload=/bin/kill -HUP \$MAINPID
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=$STOP_WAIT_SECS
Restart=on-failure
RestartSec=5
RestartPreventExitStatus=$EXIT_USAGE
$_sandbox
[Install]
WantedBy=$_target
EOF
    replace_service_file "$_unit.tmp" "$_unit"
}

write_openrc_script() {
    cat >"$init_d/outrider-agent.tmp" <<EOF
#!/sbin/openrc-run
# shellcheck shell=sh disable=SC2034 # openrc-run reads these variables
# Outrider monitoring agent, supervised: restarted when it fails.
name="outrider-agent"
description="Outrider monitoring agent"
supervisor=supervise-daemon
command="$bin"
command_args="$stub_args"
command_user="$AGENT_USER:$agent_group"
respawn_delay=5
retry="TERM/$STOP_WAIT_SECS/KILL/5"
extra_started_commands="reload"

depend() {
    need net
}

reload() {
    ebegin "Reloading \$name"
    supervise-daemon "\$RC_SVCNAME" --signal HUP
    eend \$?
}
EOF
    chmod 0755 "$init_d/outrider-agent.tmp"
    replace_service_file "$init_d/outrider-agent.tmp" "$init_d/outrider-agent"
}

# A SysV script whose daemon is a small respawn loop: SysV init does not
# supervise, so the loop restarts the stub when it fails and forwards
# SIGTERM/SIGHUP to it. The loop runs as root; the stub as the agent's
# user (run_as_agent_user).
write_sysv_script() {
    _launch=$(run_as_agent_user)
    cat >"$init_d/outrider-agent.tmp" <<EOF
#!/bin/sh
### BEGIN INIT INFO
# Provides:          outrider-agent
# Required-Start:    \$network \$remote_fs
# Required-Stop:     \$network \$remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: Outrider monitoring agent
### END INIT INFO
PIDFILE=/run/outrider-agent.pid

supervise() {
    child=
    trap 'kill -TERM "\$child" 2>/dev/null; wait "\$child"; exit 0' TERM INT
    trap 'kill -HUP "\$child" 2>/dev/null' HUP
    while :; do
        $_launch &
        child=\$!
        wait "\$child"
        code=\$?
        [ "\$code" -eq 0 ] || [ "\$code" -eq $EXIT_USAGE ] && exit "\$code"
        sleep 5
    done
}

case "\${1:-}" in
    supervise) supervise ;;
    start)
        if [ -f "\$PIDFILE" ] && kill -0 "\$(cat "\$PIDFILE")" 2>/dev/null; then exit 0; fi
        nohup "\$0" supervise >/dev/null 2>&1 &
        echo \$! >"\$PIDFILE"
        ;;
    stop)
        [ -f "\$PIDFILE" ] || exit 0
        pid=\$(cat "\$PIDFILE")
        kill -TERM "\$pid" 2>/dev/null
        i=0
        while kill -0 "\$pid" 2>/dev/null && [ \$i -lt $STOP_WAIT_SECS ]; do sleep 1; i=\$((i + 1)); done
        kill -KILL "\$pid" 2>/dev/null
        rm -f "\$PIDFILE"
        ;;
    reload) [ -f "\$PIDFILE" ] && kill -HUP "\$(cat "\$PIDFILE")" ;;
    restart) "\$0" stop; "\$0" start ;;
    status)
        if [ -f "\$PIDFILE" ] && kill -0 "\$(cat "\$PIDFILE")" 2>/dev/null; then echo running; else echo stopped; exit 3; fi
        ;;
    *) echo "usage: \$0 {start|stop|restart|reload|status}" >&2; exit 2 ;;
esac
EOF
    chmod 0755 "$init_d/outrider-agent.tmp"
    replace_service_file "$init_d/outrider-agent.tmp" "$init_d/outrider-agent"
}

background_running() {
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_background() {
    mkdir -p "$log_dir"
    if [ "$system" = true ]; then
        # As run_as_agent_user says, spelled out: the pid must be the stub's.
        if command -v setpriv >/dev/null 2>&1; then
            nohup setpriv --reuid="$(id -u "$AGENT_USER")" --regid="$(id -g "$AGENT_USER")" \
                --init-groups -- "$bin" >>"$log_dir/stdout.log" 2>&1 </dev/null &
        else
            nohup su -s /bin/sh "$AGENT_USER" -c "exec $bin" >>"$log_dir/stdout.log" 2>&1 </dev/null &
        fi
    else
        # shellcheck disable=SC2086 # stub_args is empty or "--prefix DIR"
        nohup "$bin" $stub_args >>"$log_dir/stdout.log" 2>&1 </dev/null &
    fi
    echo $! >"$pid_file.tmp"
    mv "$pid_file.tmp" "$pid_file"
}

# stop_background: SIGTERM (the agent says goodbye), then wait for it to exit.
stop_background() {
    background_running || { rm -f "$pid_file"; return 0; }
    _pid=$(cat "$pid_file")
    kill -TERM "$_pid" 2>/dev/null
    _i=0
    while kill -0 "$_pid" 2>/dev/null && [ "$_i" -lt "$STOP_WAIT_SECS" ]; do
        sleep 1
        _i=$((_i + 1))
    done
    if kill -0 "$_pid" 2>/dev/null; then
        say "the agent did not stop within ${STOP_WAIT_SECS}s; killing it"
        kill -KILL "$_pid" 2>/dev/null
    fi
    rm -f "$pid_file"
}

# start_service MANAGER: installs and (re)starts the service; a running
# agent is restarted only when its binary, settings or service definition
# changed (`changed`).
start_service() {
    case $1 in
        systemd)
            write_systemd_unit
            systemctl_ daemon-reload || die "systemctl daemon-reload failed"
            systemctl_ enable outrider-agent.service >/dev/null 2>&1 || die "cannot enable outrider-agent.service"
            if [ "$changed" = true ]; then
                systemctl_ restart outrider-agent.service || die "cannot start outrider-agent.service"
            else
                systemctl_ start outrider-agent.service || die "cannot start outrider-agent.service"
            fi
            ;;
        openrc)
            write_openrc_script
            rc-update add outrider-agent default >/dev/null || die "rc-update add failed"
            if [ "$changed" = true ]; then
                rc-service outrider-agent restart || die "cannot start outrider-agent"
            else
                rc-service outrider-agent start || die "cannot start outrider-agent"
            fi
            ;;
        sysv)
            write_sysv_script
            if command -v update-rc.d >/dev/null 2>&1; then
                update-rc.d outrider-agent defaults >/dev/null 2>&1
            elif command -v chkconfig >/dev/null 2>&1; then
                chkconfig --add outrider-agent >/dev/null 2>&1
            fi
            if [ "$changed" = true ]; then
                "$init_d/outrider-agent" restart || die "cannot start outrider-agent"
            else
                "$init_d/outrider-agent" start || die "cannot start outrider-agent"
            fi
            ;;
        none)
            if background_running; then
                [ "$changed" = true ] || return 0
                stop_background
            fi
            start_background
            ;;
    esac
}

stop_service() {
    case $1 in
        systemd)
            systemctl_ disable --now outrider-agent.service >/dev/null 2>&1
            rm -f "$(systemd_unit_path)"
            systemctl_ daemon-reload >/dev/null 2>&1
            ;;
        openrc)
            rc-service outrider-agent stop >/dev/null 2>&1
            rc-update del outrider-agent default >/dev/null 2>&1
            rm -f "$init_d/outrider-agent"
            ;;
        sysv)
            "$init_d/outrider-agent" stop >/dev/null 2>&1
            if command -v update-rc.d >/dev/null 2>&1; then
                update-rc.d -f outrider-agent remove >/dev/null 2>&1
            elif command -v chkconfig >/dev/null 2>&1; then
                chkconfig --del outrider-agent >/dev/null 2>&1
            fi
            rm -f "$init_d/outrider-agent"
            ;;
    esac
    # A background agent may run whatever the manager was.
    stop_background
}

# --- the agent's user ----------------------------------------------------

# ensure_agent_user: a root install runs the agent as the system user
# AGENT_USER, made here unless it exists, with whichever tool the system
# has: useradd (shadow), adduser --system (Debian's), or adduser -S
# (BusyBox). Sets agent_group to its primary group and created_user to yes
# when it made it (uninstall then removes it).
ensure_agent_user() {
    if ! id -u "$AGENT_USER" >/dev/null 2>&1; then
        _nologin=/bin/false
        for _shell in /usr/sbin/nologin /sbin/nologin; do
            if [ -x "$_shell" ]; then _nologin=$_shell; break; fi
        done
        if command -v useradd >/dev/null 2>&1; then
            useradd --system --user-group --no-create-home --home-dir "$data_dir" \
                --shell "$_nologin" "$AGENT_USER" ||
                die "useradd could not create the system user $AGENT_USER"
        elif command -v adduser >/dev/null 2>&1; then
            if ! adduser --system --group --no-create-home --home "$data_dir" \
                --shell "$_nologin" "$AGENT_USER" >/dev/null 2>&1; then
                # BusyBox: no long options; the group first.
                addgroup -S "$AGENT_USER" >/dev/null 2>&1
                adduser -S -D -H -h "$data_dir" -s "$_nologin" -G "$AGENT_USER" "$AGENT_USER" ||
                    die "adduser could not create the system user $AGENT_USER"
            fi
        else
            die "cannot create the system user $AGENT_USER (no useradd or adduser); create it and run again"
        fi
        created_user=yes
        say "created the system user $AGENT_USER; the agent and its plugins run as it"
    fi
    agent_group=$(id -gn "$AGENT_USER") || die "cannot read the group of $AGENT_USER"
}

# own_files: the agent's user owns what the agent writes (its config
# directory: identity.key, root.json rotations, the token it removes; the
# data directory: state, builds, spool, plugins, collectors; the logs). The stub and
# bin/ stay root's, and nothing is writable by group or others, so nothing
# the agent executes can be changed by another user.
own_files() {
    chown -R "$AGENT_USER:$agent_group" "$config_dir" "$data_dir" "$log_dir" ||
        die "cannot give $config_dir, $data_dir and $log_dir to $AGENT_USER"
    chown -R 0:0 "$data_dir/bin" || die "cannot own $data_dir/bin"
    chmod 0755 "$data_dir/bin" "$bin"
    chmod -R go-w "$config_dir" "$data_dir" "$log_dir"
}

# run_as_agent_user: a shell command line that runs the stub of a root
# install (a fixed path without spaces, no arguments) as AGENT_USER:
# setpriv (util-linux) execs it, so the stub's pid is the one signalled;
# else su, with a shell because the user's login shell is nologin.
run_as_agent_user() {
    if command -v setpriv >/dev/null 2>&1; then
        printf 'setpriv --reuid=%s --regid=%s --init-groups -- %s' \
            "$(id -u "$AGENT_USER")" "$(id -g "$AGENT_USER")" "$bin"
    else
        printf 'su -s /bin/sh %s -c "exec %s"' "$AGENT_USER" "$bin"
    fi
}

# replace_service_file TMP DEST: moves TMP over DEST; a definition that
# changed (another user, new options) restarts the agent.
replace_service_file() {
    cmp -s "$1" "$2" 2>/dev/null || changed=true
    mv "$1" "$2"
}

# --- install and uninstall -----------------------------------------------

# toml_string VALUE: VALUE as a TOML basic string.
toml_string() {
    printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

write_agent_toml() {
    {
        echo "# Written by install.sh; run it again to change these settings."
        echo "server_url = $(toml_string "$server")"
        if [ -n "$extra_servers" ]; then
            printf 'extra_server_urls = ['
            _sep=''
            set -f
            for _url in $extra_servers; do
                printf '%s%s' "$_sep" "$(toml_string "$_url")"
                _sep=', '
            done
            set +f
            echo ']'
        fi
        echo "enrollment_token = $(toml_string "$token")"
        echo "channel = $(toml_string "$channel")"
        if [ -n "$tags" ]; then
            printf 'tags = ['
            _sep=''
            _old_ifs=$IFS
            IFS=,
            for _tag in $tags; do
                printf '%s%s' "$_sep" "$(toml_string "$_tag")"
                _sep=', '
            done
            IFS=$_old_ifs
            echo ']'
        fi
        # Local policy the server cannot override; without the flag the
        # agent's default (ad-hoc commands refused) applies.
        if [ "$allow_adhoc" = true ]; then
            echo
            echo '[policy]'
            echo 'allow_adhoc = true'
        fi
    } >"$tmp/agent.toml"
}

# Whether the installed agent.toml holds these settings already, except the
# enrollment token the agent removed once it enrolled with it: the same
# token as the last run (its SHA-256 is in the install record) means nothing
# changed; a different one is a new enrollment and is written.
spent_token_unchanged() {
    [ -f "$record" ] || return 1
    _recorded=$(awk -F= '$1 == "token_sha256" { print $2 }' "$record")
    [ -n "$_recorded" ] && [ "$_recorded" = "$token_sha" ] || return 1
    grep -v '^enrollment_token = ' "$tmp/agent.toml" >"$tmp/agent.toml.spent" || return 1
    cmp -s "$tmp/agent.toml.spent" "$config_dir/agent.toml" 2>/dev/null
}

uninstall() {
    _created=no
    _created_user=no
    if [ -f "$record" ]; then
        _created_user=$(awk -F= '$1 == "created_user" { print $2 }' "$record")
        _manager=$(awk -F= '$1 == "service_manager" { print $2 }' "$record")
        _created=$(awk -F= '$1 == "created_data_dir" { print $2 }' "$record")
    else
        _manager=$(detect_service_manager)
    fi
    [ -e "$bin" ] || [ -e "$config_dir/agent.toml" ] || {
        say "nothing is installed under $data_dir"
        return 0
    }
    say "stopping the agent (it deregisters from the server)"
    stop_service "${_manager:-none}"
    if [ "$system" = true ] || [ "$_created" = yes ]; then
        # The data directory is ours alone: everything in it goes, including
        # whatever newer agent versions keep there.
        rm -rf "${config_dir:?}" "${log_dir:?}" "${data_dir:?}"
    else
        # A prefix that existed before the install: remove only our entries.
        rm -rf "${config_dir:?}" "${log_dir:?}" "${data_dir:?}/bin" "$data_dir/versions" \
            "$data_dir/run" "$data_dir/spool" "$data_dir/plugins" "$data_dir/state.json" \
            "$data_dir/state.json.tmp" "$data_dir/outrider-agent.lock" "$data_dir/connection.json" \
            "$data_dir/last_server_url" "$data_dir/collectors" "$data_dir/downloads" "$pid_file" "$record"
        rmdir "$data_dir" 2>/dev/null || say "left $data_dir: it holds files the installer did not create"
    fi
    if [ "$system" = true ] && [ "$_created_user" = yes ] && id -u "$AGENT_USER" >/dev/null 2>&1; then
        if command -v userdel >/dev/null 2>&1; then
            # -f: the agent has stopped; a process of another namespace
            # with the same uid must not keep the user.
            userdel "$AGENT_USER" >/dev/null 2>&1 || userdel -f "$AGENT_USER" >/dev/null 2>&1
        else
            deluser "$AGENT_USER" >/dev/null 2>&1
        fi
        if grep -q "^$AGENT_USER:" /etc/group 2>/dev/null; then
            groupdel "$AGENT_USER" >/dev/null 2>&1 || delgroup "$AGENT_USER" >/dev/null 2>&1
        fi
        id -u "$AGENT_USER" >/dev/null 2>&1 && say "could not remove the system user $AGENT_USER"
    fi
    say "uninstalled"
}

main() {
    server=$DEFAULT_SERVER
    server_given=false
    extra_servers=''
    token=''
    channel=stable
    tags=''
    prefix=''
    root_sha256=''
    service_manager=auto
    no_service=false
    allow_adhoc=false
    do_uninstall=false
    while [ $# -gt 0 ]; do
        case $1 in
            --token | --server | --channel | --tags | --prefix | --root-sha256 | --service-manager)
                [ $# -ge 2 ] || die "$1 needs a value (see --help)"
                case $1 in
                    --token) token=$2 ;;
                    --server)
                        case $2 in
                            *[[:space:]]*) die "--server must not contain spaces: '$2'" ;;
                        esac
                        if [ "$server_given" = true ]; then
                            extra_servers="${extra_servers:+$extra_servers }$2"
                        else
                            server=$2
                            server_given=true
                        fi
                        ;;
                    --channel) channel=$2 ;;
                    --tags) tags=$2 ;;
                    --prefix) prefix=$2 ;;
                    --root-sha256) root_sha256=$2 ;;
                    --service-manager) service_manager=$2 ;;
                esac
                shift 2
                ;;
            --no-service) no_service=true; shift ;;
            --allow-adhoc) allow_adhoc=true; shift ;;
            --uninstall) do_uninstall=true; shift ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown option $1" ;;
        esac
    done

    need_cmd uname
    need_cmd awk
    need_cmd sed
    need_cmd mktemp
    if [ -z "$prefix" ] && [ "$(id -u)" -ne 0 ]; then
        prefix="$HOME/.outrider"
        say "not running as root: installing under $prefix (choose with --prefix)"
    fi
    case $prefix in
        '' | /*) ;;
        *) prefix="$(pwd)/$prefix" ;;
    esac
    set_layout
    set_service_paths
    case $service_manager in
        auto) service_manager=$(detect_service_manager) ;;
        systemd | openrc | sysv | none) ;;
        *) die "--service-manager must be auto, systemd, openrc, sysv or none, not '$service_manager'" ;;
    esac
    if [ "$system" = false ] && { [ "$service_manager" = openrc ] || [ "$service_manager" = sysv ]; }; then
        die "--service-manager $service_manager needs a root install (without --prefix)"
    fi

    if [ "$do_uninstall" = true ]; then
        uninstall
        return
    fi

    [ -n "$token" ] || die "--token is required (create one with: outrider tokens create)"
    check_server_url
    check_extra_servers
    case $channel in
        '' | *[!a-z0-9-]*) die "--channel must be letters a-z, digits and '-', not '$channel'" ;;
    esac
    case $tags in
        *[!a-z0-9_.,-]*) die "--tags must be comma-separated names of a-z, 0-9, '_', '.', '-'" ;;
    esac
    if [ -n "$root_sha256" ] && ! is_hex "$root_sha256" 64; then
        die "--root-sha256 must be 64 lowercase hex characters"
    fi

    case "$(uname -s)" in
        Linux) os=linux ;;
        Darwin) os=macos ;;
        FreeBSD) os=freebsd ;;
        *) die "unsupported operating system $(uname -s)" ;;
    esac
    case "$(uname -m)" in
        x86_64 | amd64) arch=x86_64 ;;
        aarch64 | arm64) arch=aarch64 ;;
        *) die "unsupported architecture $(uname -m)" ;;
    esac
    triple="$arch-$os"

    tmp=$(mktemp -d) || die "cannot create a temporary directory"
    trap 'rm -rf "$tmp"' EXIT
    trap 'exit 1' INT TERM
    choose_verifier
    now=$(date +%s)
    updates="$server/v1/updates"

    # 1. The root: pinned by hash if asked, self-signed by a threshold of its
    #    root keys, not expired, not older than the host trusts, and on a
    #    re-run the installed root or signed by it.
    download "$updates/root.json" "$tmp/root.json" "$MAX_METADATA_BYTES"
    if [ -n "$root_sha256" ]; then
        _got=$(sha256_of "$tmp/root.json")
        [ "$_got" = "$root_sha256" ] ||
            die "root.json from $server has sha256 $_got, not the pinned $root_sha256; nothing was installed"
    fi
    read_root "$tmp/root.json" "root.json from $server"
    [ "$(json_get "$tmp/root.json.payload.flat" .expires_unix)" -gt "$now" ] ||
        die "the update root has expired; the server's operator must rotate it"
    # The root version this host trusts never goes down: a re-run with an
    # older root (a stale mirror, a replayed root.json) is refused.
    root_version=$(json_get "$tmp/root.json.payload.flat" .version)
    case "$root_version" in '' | *[!0-9]*) die "root.json has no valid version" ;; esac
    trusted_version=$(trusted_root_version)
    if [ -n "$trusted_version" ] && [ "$root_version" -lt "$trusted_version" ]; then
        die "root.json from $server is version $root_version, older than version $trusted_version this host already trusts; nothing was installed"
    fi
    if [ -n "$root_sha256" ]; then
        say "the update root from $server matches the pinned sha256"
    elif [ -f "$config_dir/root.json" ]; then
        follow_root_chain "$config_dir/root.json"
    else
        say "trusting the update root served by $server on first use; pin it with --root-sha256 $(sha256_of "$tmp/root.json") (check it with the server's operator: outrider keys init prints it)"
    fi

    # 2. The channel's manifest: signed by a threshold of unexpired release
    #    keys, for this channel, not expired.
    awk -F '\t' -v now="$now" '
        $1 ~ /^\.release_keys\..*\.public_key$/ { k = $1; sub(/^\.release_keys\./, "", k); sub(/\.public_key$/, "", k); pub[k] = $2 }
        $1 ~ /^\.release_keys\..*\.expires_unix$/ { k = $1; sub(/^\.release_keys\./, "", k); sub(/\.expires_unix$/, "", k); until[k] = $2 }
        END { for (k in pub) if (until[k] + 0 > now + 0) print k, pub[k] }
    ' "$tmp/root.json.payload.flat" >"$tmp/release.keys"
    download "$updates/channels/$channel/manifest.json" "$tmp/manifest.json" "$MAX_METADATA_BYTES"
    verify_envelope "$tmp/manifest.json" release "$tmp/release.keys" \
        "$(json_get "$tmp/root.json.payload.flat" .release_threshold)" "the $channel manifest"
    json_flatten "$tmp/manifest.json.payload" >"$tmp/manifest.flat" || die "the manifest's payload is not valid JSON"
    [ "$(json_get "$tmp/manifest.flat" .channel)" = "$channel" ] ||
        die "the server answered with a manifest for another channel; nothing was installed"
    [ "$(json_get "$tmp/manifest.flat" .expires_unix)" -gt "$now" ] ||
        die "the $channel manifest has expired; the server's operator must re-sign it"

    # 3. The stub the manifest names for this host, checked by size and hash.
    stub_sha=$(json_get "$tmp/manifest.flat" ".targets.$triple.stub.sha256")
    stub_size=$(json_get "$tmp/manifest.flat" ".targets.$triple.stub.size")
    if [ -z "$stub_sha" ] || [ -z "$stub_size" ]; then
        die "channel $channel has no agent for $triple yet (publish one with: outrider release publish-stub)"
    fi
    is_hex "$stub_sha" 64 || die "the manifest names a malformed stub hash"
    [ "$stub_size" -le "$MAX_STUB_BYTES" ] || die "the manifest names a stub of $stub_size bytes, over the $MAX_STUB_BYTES allowed"
    download "$updates/blobs/$stub_sha" "$tmp/outrider-agent" "$stub_size"
    _got=$(sha256_of "$tmp/outrider-agent")
    [ "$_got" = "$stub_sha" ] ||
        die "the downloaded agent (sha256 $_got) does not match the signed manifest ($stub_sha); it may have been tampered with, nothing was installed"

    # 4. Install: config (0600, it holds the token), root, stub, service.
    umask 077
    created_data_dir=no
    created_user=no
    if [ -f "$record" ]; then
        created_data_dir=$(awk -F= '$1 == "created_data_dir" { print $2 }' "$record")
        created_user=$(awk -F= '$1 == "created_user" { print $2 }' "$record")
    elif [ ! -e "$data_dir" ]; then
        created_data_dir=yes
    fi
    if [ "$system" = true ]; then
        ensure_agent_user
    fi
    mkdir -p "$config_dir" "$data_dir/bin" "$log_dir" || die "cannot create $data_dir"
    changed=false
    write_agent_toml
    printf '%s' "$token" >"$tmp/token"
    token_sha=$(sha256_of "$tmp/token")
    rm -f "$tmp/token"
    if ! cmp -s "$tmp/agent.toml" "$config_dir/agent.toml" 2>/dev/null &&
        ! spent_token_unchanged; then
        mv "$tmp/agent.toml" "$config_dir/agent.toml" || die "cannot write $config_dir/agent.toml"
        changed=true
    fi
    # The stub rotates root.json through the signed chain; a re-run replaces
    # it only with a root pinned explicitly or reached through that chain.
    if ! cmp -s "$tmp/root.json" "$config_dir/root.json" 2>/dev/null; then
        chmod 0644 "$tmp/root.json"
        mv "$tmp/root.json" "$config_dir/root.json" || die "cannot write $config_dir/root.json"
    fi
    if [ ! -f "$bin" ] || [ "$(sha256_of "$bin")" != "$stub_sha" ]; then
        chmod 0755 "$tmp/outrider-agent"
        mv "$tmp/outrider-agent" "$bin.tmp" || die "cannot install $bin"
        mv "$bin.tmp" "$bin" || die "cannot install $bin"
        changed=true
    fi
    printf 'service_manager=%s\ncreated_data_dir=%s\ncreated_user=%s\ntoken_sha256=%s\n' \
        "$service_manager" "$created_data_dir" "${created_user:-no}" "$token_sha" >"$record"
    if [ "$system" = true ]; then
        own_files
    fi
    if [ "$no_service" = true ]; then
        say "installed $bin; not starting it (--no-service)"
        return 0
    fi
    start_service "$service_manager"
    say "installed and started the agent ($service_manager); it appears in 'outrider agents' once connected"
}

main "$@" || exit 1
