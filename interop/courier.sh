#!/bin/sh
# Courier POP3 (courier-pop 1.0.16) run from its unpacked prefix, for interop/servers.py.
#
# Courier and its authlib hard-code /etc/courier (authdaemonrc), /usr/lib/courier-authlib (the
# authentication modules, dlopen'ed) and /run/courier/authdaemon (the authdaemond socket). None of them
# exist on this machine, and nothing may be installed there: so this script runs in a private mount
# namespace (unshare -m, started by servers.py) where /etc and /usr/lib are read-only overlays of
# [$LAYER/etc,] $PREFIX/etc|usr/lib over the real ones, and /run is a private tmpfs. Outside the
# namespace nothing changes; the processes die with their process group.
#
# Environment: PREFIX, LAYER (a folder with etc/courier/authdaemonrc), PORT (POP3 with STLS),
# TLS_PORT (implicit TLS), CERT (key + certificate chain PEM), MAILDIR (absolute maildir path).
set -eu
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=$LAYER/etc:$PREFIX/etc:/etc" /etc
mount -t overlay overlay -o "lowerdir=$PREFIX/usr/lib:/usr/lib" /usr/lib
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/courier/authdaemon

export LD_LIBRARY_PATH="$PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/lib/x86_64-linux-gnu:$PREFIX/usr/lib/courier-authlib"
PATH="$PREFIX/usr/bin:$PREFIX/usr/sbin:/usr/bin:/usr/sbin:/bin:/sbin"
export PATH

/usr/lib/courier/courier-authlib/authdaemond &
for _ in $(seq 50); do [ -S /run/courier/authdaemon/socket ] && break; sleep 0.1; done

# What /etc/courier/pop3d and pop3d-ssl would set (Debian's defaults), with SASL PLAIN offered.
export POP3AUTH="PLAIN LOGIN" POP3AUTH_TLS="PLAIN LOGIN" POP3_PROXY=0 MIME_UNICODE_MESSAGE_TYPE=message/global
export COURIERTLS="$PREFIX/usr/bin/couriertls" TLS_CERTFILE="$CERT" TLS_VERIFYPEER=NONE
export TLS_TRUSTCERTS=/etc/ssl/certs/ca-certificates.crt POP3_TLS_REQUIRED=0
LOGIN="$PREFIX/usr/lib/courier/courier/courierpop3login"
POP3D="$PREFIX/usr/lib/courier/courier/courierpop3d"
TCPD="$PREFIX/usr/sbin/couriertcpd"

POP3_STARTTLS=YES "$TCPD" -address=127.0.0.1 -maxprocs=10 -maxperip=10 -nodnslookup -noidentlookup \
    "$PORT" "$LOGIN" "$POP3D" "$MAILDIR" &
POP3_STARTTLS=NO POP3_TLS=1 exec "$TCPD" -address=127.0.0.1 -maxprocs=10 -maxperip=10 -nodnslookup \
    -noidentlookup "$TLS_PORT" "$COURIERTLS" -server -tcpd "$LOGIN" "$POP3D" "$MAILDIR"
