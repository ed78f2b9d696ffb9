#!/usr/bin/env bash
# Makes a CA and certificates signed by it with the openssl command, for
# logkvd's TLS (docs/tls.md) and the tests. Keys are EC P-256, certificates
# SHA-256. Nothing is sent anywhere; keys are written mode 0600.
#
#   tools/make-certs.sh DIR ca [NAME]                DIR/ca.pem, DIR/ca.key (10 years),
#                                                    CN=NAME (default "logkv CA"; a CA
#                                                    that replaces another needs a name
#                                                    of its own)
#   tools/make-certs.sh DIR server NAME [SAN...]     DIR/NAME.pem, DIR/NAME.key: a server
#                                                    (and peer) certificate for NAME and
#                                                    each SAN (a DNS name or an IP address)
#   tools/make-certs.sh DIR client NAME              a client certificate, CN=NAME
#   tools/make-certs.sh DIR expired NAME [SAN...]    as server, valid only in 2020
#   tools/make-certs.sh DIR future NAME [SAN...]     as server, valid only from 2090 on
#   tools/make-certs.sh DIR revoke [NAME...]         revokes DIR/NAME.pem, and writes
#                                                    DIR/crl.pem (the CA's revocation list,
#                                                    for --tls-crl and --peer-tls-crl; 10
#                                                    years); with no NAME, the list as it
#                                                    stands (empty at first)
#
# server certificates are usable as clients too (nodes dial each other with
# theirs). DAYS (default 825) sets the validity of server and client ones.
set -euo pipefail

usage() { sed -n '2,23p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
dir=$1
kind=$2
shift 2
mkdir -p "$dir"
umask 077
days=${DAYS:-825}

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# The subjectAltName list of NAME and the SANs: IPs as IP:, the rest as DNS:.
san_list() {
  local out="" name
  for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
      out+="${out:+,}IP:$name"
    else
      out+="${out:+,}DNS:$name"
    fi
  done
  printf '%s' "$out"
}

need_ca() {
  [ -f "$dir/ca.pem" ] && [ -f "$dir/ca.key" ] || { echo "make-certs: no CA in $dir: run '$0 $dir ca' first" >&2; exit 1; }
}

# Signs DIR/$1.csr into DIR/$1.pem with the extensions in $2, valid from $3 to
# $4 (openssl ca's date format) or for $days days when $3 is empty.
sign() {
  local name=$1 extensions=$2 start=${3:-} end=${4:-}
  local work
  work=$(mktemp -d)
  : > "$work/index.txt"
  printf '%s\n' "$(openssl rand -hex 16)" > "$work/serial"
  cat > "$work/ca.cnf" <<EOF
[ ca ]
default_ca = logkv
[ logkv ]
database = $work/index.txt
serial = $work/serial
new_certs_dir = $work
default_md = sha256
policy = any
copy_extensions = none
unique_subject = no
[ any ]
commonName = supplied
[ ext ]
$extensions
EOF
  local dates=(-days "$days")
  [ -n "$start" ] && dates=(-startdate "$start" -enddate "$end")
  openssl ca -batch -notext -config "$work/ca.cnf" -extensions ext -cert "$dir/ca.pem" \
    -keyfile "$dir/ca.key" -in "$dir/$name.csr" -out "$dir/$name.pem" "${dates[@]}" \
    2>"$work/log" || { cat "$work/log" >&2; rm -rf "$work"; exit 1; }
  rm -rf "$work" "$dir/$name.csr"
}

case $kind in
  ca)
    new_key "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 -subj "/CN=${1:-logkv CA}" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$dir/ca.pem"
    ;;
  server|expired|future)
    [ $# -ge 1 ] || usage
    need_ca
    name=$1
    new_key "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr"
    ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$(san_list "$@")"
    if [ "$kind" = expired ]; then
      sign "$name" "$ext" 20200101000000Z 20201231000000Z
    elif [ "$kind" = future ]; then
      sign "$name" "$ext" 20900101000000Z 20901231000000Z
    else
      sign "$name" "$ext"
    fi
    ;;
  client)
    [ $# -eq 1 ] || usage
    need_ca
    name=$1
    new_key "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr"
    sign "$name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
    ;;
  revoke)
    need_ca
    # The CA's revocation database lives in DIR/crl-db; each revoke adds to it.
    db=$dir/crl-db
    mkdir -p "$db"
    [ -f "$db/index.txt" ] || : > "$db/index.txt"
    [ -f "$db/crlnumber" ] || echo 01 > "$db/crlnumber"
    printf '[ ca ]\ndefault_ca = logkv\n[ logkv ]\ndatabase = %s\ncrlnumber = %s\ndefault_md = sha256\ndefault_crl_days = 3650\n' \
      "$db/index.txt" "$db/crlnumber" > "$db/ca.cnf"
    for name in "$@"; do
      [ -f "$dir/$name.pem" ] || { echo "make-certs: no $dir/$name.pem to revoke" >&2; exit 1; }
      openssl ca -batch -config "$db/ca.cnf" -cert "$dir/ca.pem" -keyfile "$dir/ca.key" \
        -revoke "$dir/$name.pem" 2>"$db/log" || { cat "$db/log" >&2; exit 1; }
    done
    openssl ca -batch -config "$db/ca.cnf" -cert "$dir/ca.pem" -keyfile "$dir/ca.key" -gencrl \
      -out "$dir/crl.pem" 2>"$db/log" || { cat "$db/log" >&2; exit 1; }
    ;;
  *) usage ;;
esac
