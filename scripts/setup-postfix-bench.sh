#!/bin/sh
# A Postfix instance for bench/ingest.py comparisons: accepts mail from loopback
# on 127.0.0.1:${POSTFIX_BENCH_PORT:-2625} and discards it (queue, cleanup and
# qmgr still run, as for real mail). Idempotent. Separate config and queue under
# /var/lib/postwarden-bench-postfix, so a system Postfix is left alone.
#   scripts/setup-postfix-bench.sh          install, configure and start
#   scripts/setup-postfix-bench.sh stop     stop the instance
# The master's PID for `bench/ingest.py --pid ... --tree` is printed at the end.
set -eu
PORT="${POSTFIX_BENCH_PORT:-2625}"
BASE=/var/lib/postwarden-bench-postfix
CONF="$BASE/etc"

if [ "${1:-}" = "stop" ]; then
    postfix -c "$CONF" stop 2>/dev/null || true
    exit 0
fi

if ! command -v postfix >/dev/null 2>&1 && [ ! -x /usr/sbin/postfix ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix
fi
PATH="$PATH:/usr/sbin"

# The default instance must list ours before `postfix -c` accepts it.
[ -f /etc/postfix/main.cf ] || cp /usr/share/postfix/main.cf.debian /etc/postfix/main.cf
case "$(postconf -h alternate_config_directories)" in
    *"$CONF"*) ;;
    *) postconf -e "alternate_config_directories = $CONF" ;;
esac

mkdir -p "$CONF" "$BASE/queue" "$BASE/data"
cp /etc/postfix/master.cf "$CONF/master.cf"
: > "$CONF/main.cf"
postconf -c "$CONF" -e \
    "queue_directory = $BASE/queue" \
    "data_directory = $BASE/data" \
    "myhostname = bench.localhost" \
    "inet_interfaces = 127.0.0.1" \
    "inet_protocols = ipv4" \
    "mydestination =" \
    "mynetworks = 127.0.0.0/8" \
    "smtpd_relay_restrictions = permit_mynetworks, reject" \
    "default_transport = discard" \
    "relay_transport = discard" \
    "local_transport = discard" \
    "maillog_file = $BASE/maillog" \
    "default_process_limit = 200" \
    "smtpd_client_connection_count_limit = 0" \
    "smtpd_client_message_rate_limit = 0" \
    "compatibility_level = 3.6"
# Swap the port-25 listener for the bench port.
postconf -c "$CONF" -M# smtp/inet
postconf -c "$CONF" -Me "127.0.0.1:$PORT/inet = 127.0.0.1:$PORT inet n - n - - smtpd"
postconf -c "$CONF" -M# submission/inet 2>/dev/null || true
postconf -c "$CONF" -M# smtps/inet 2>/dev/null || true
chown -R postfix:postfix "$BASE/data"
postfix -c "$CONF" check
postfix -c "$CONF" status >/dev/null 2>&1 || postfix -c "$CONF" start
sleep 1
echo "postfix bench instance on 127.0.0.1:$PORT, master pid $(head -1 "$BASE/queue/pid/master.pid" | tr -d ' ')"
