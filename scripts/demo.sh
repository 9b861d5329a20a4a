#!/usr/bin/env bash
# `make demo`: the whole elevation path on one machine, as root, in a throw-away prefix.
#   build -> install shim + executable into a demo prefix -> local CA + TLS cert (openssl) ->
#   `apes idp serve` on 127.0.0.1 with TLS -> a human approver and an agent (keys via `apes keygen`,
#   users via `apes idp users add`) -> a demo Unix user mapped to the agent -> `apes trust` ->
#   the agent runs `apes --reason demo -- id -u` as that user -> the human approves -> it prints 0.
# Everything it starts or creates is removed at the end (the _apes system user stays: make install
# creates it and other installs share it).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
  echo "make demo installs a setuid binary into a temporary prefix: run it as root (sudo make demo)" >&2
  exit 77
fi
for tool in openssl setpriv make cc; do
  command -v "$tool" >/dev/null || { echo "make demo needs $tool" >&2; exit 78; }
done

DEMO_USER=apes-demo
HUMAN=alice@demo.example
AGENT=agent@demo.example
D=$(mktemp -d /tmp/apes-demo.XXXXXX)
chmod 0755 "$D"
IDP_PID=""
CREATED_USER=""
cleanup() {
  local code=$?
  [ -n "$IDP_PID" ] && kill "$IDP_PID" 2>/dev/null && wait "$IDP_PID" 2>/dev/null || true
  [ -n "$CREATED_USER" ] && userdel "$DEMO_USER" 2>/dev/null || true
  rm -rf "$D"
  exit $code
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
as_user() { # run as the demo user with a minimal environment of its own
  setpriv --reuid "$DEMO_USER" --regid "$DEMO_USER" --init-groups -- \
    env -i HOME="$AGENT_HOME" PATH=/usr/bin:/bin LANG=C.UTF-8 "$@"
}

step "build and install into $D (PREFIX, SYSCONFDIR, LOCALSTATEDIR all under it)"
[ -x dist/apes ] || make -s build
make -s -o build install PREFIX="$D/usr" SYSCONFDIR="$D/etc" LOCALSTATEDIR="$D/var" NATIVE_OUT="$D/build"
SHIM="$D/usr/bin/apes"
EXEC="$D/usr/libexec/apes/apes"
ls -l "$SHIM" "$EXEC"

step "a local CA and a TLS certificate for 127.0.0.1 (openssl)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=apes demo CA" \
  -keyout "$D/ca.key" -out "$D/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$D/server.key" -out "$D/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$D/server.ext"
openssl x509 -req -in "$D/server.csr" -CA "$D/ca.pem" -CAkey "$D/ca.key" -CAcreateserial -days 1 \
  -extfile "$D/server.ext" -out "$D/server.pem" 2>/dev/null
chmod 0644 "$D/ca.pem"
echo "CA: $D/ca.pem"

step "the demo Unix user $DEMO_USER, and the keys (apes keygen)"
if ! getent passwd "$DEMO_USER" >/dev/null; then
  useradd --user-group --no-create-home --shell /usr/sbin/nologin --home-dir /nonexistent "$DEMO_USER"
  CREATED_USER=1
fi
HUMAN_HOME="$D/human"
AGENT_HOME="$D/agent-home"
mkdir -p "$HUMAN_HOME" "$AGENT_HOME"
chmod 0700 "$HUMAN_HOME" "$AGENT_HOME"
chown "$DEMO_USER:$DEMO_USER" "$AGENT_HOME"
HOME="$HUMAN_HOME" "$EXEC" keygen --out "$HUMAN_HOME/id_ed25519" --comment "$HUMAN" >/dev/null
as_user "$SHIM" keygen --out "$AGENT_HOME/id_ed25519" --comment "$AGENT" >/dev/null
echo "human key: $HUMAN_HOME/id_ed25519.pub   agent key (owned by $DEMO_USER): $AGENT_HOME/id_ed25519.pub"

step "the reference IdP on 127.0.0.1 with TLS (apes idp serve), with $HUMAN and $AGENT"
"$EXEC" idp users add "$HUMAN" --human --key "$HUMAN_HOME/id_ed25519.pub" --data "$D/idp"
"$EXEC" idp users add "$AGENT" --agent --owner "$HUMAN" --key "$AGENT_HOME/id_ed25519.pub" --data "$D/idp"
# The logs exist before the background jobs start: the loops below read them at once (pipefail).
: >"$D/idp.log"
"$EXEC" idp serve --listen 127.0.0.1:0 --data "$D/idp" --tls-cert "$D/server.pem" --tls-key "$D/server.key" \
  2>"$D/idp.log" &
IDP_PID=$!
URL=""
for _ in $(seq 1 100); do
  URL=$(sed -n 's/.*"msg":"listening","url":"\([^"]*\)".*/\1/p' "$D/idp.log" | head -1)
  [ -n "$URL" ] && break
  kill -0 "$IDP_PID" 2>/dev/null || { cat "$D/idp.log" >&2; exit 69; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "the IdP did not start:" >&2; cat "$D/idp.log" >&2; exit 69; }
echo "IdP: $URL (pid $IDP_PID)"

step "log in: the human (root's shell here) and the agent (as $DEMO_USER, through the shim)"
for home in "$HUMAN_HOME" "$AGENT_HOME"; do
  mkdir -p "$home/.config/apes"
  printf 'idp = "%s"\nca_file = "%s"\n' "$URL" "$D/ca.pem" >"$home/.config/apes/config.toml"
done
chown -R "$DEMO_USER:$DEMO_USER" "$AGENT_HOME"
HOME="$HUMAN_HOME" "$EXEC" login "$HUMAN" --key "$HUMAN_HOME/id_ed25519"
as_user "$SHIM" login "$AGENT" --key "$AGENT_HOME/id_ed25519"

step "the policy: sudo apes trust (validates the IdP's discovery and JWKS over TLS)"
"$SHIM" trust --idp "$URL" --ca-file "$D/ca.pem" --approvers "$HUMAN" --map "$DEMO_USER=$AGENT"
ls -l "$D/etc/apes/config.toml"

step "the agent ($DEMO_USER) runs: apes --reason demo -- id -u"
: >"$D/err"
as_user "$SHIM" --reason demo -- id -u >"$D/out" 2>"$D/err" &
AGENT_PID=$!
GRANT=""
for _ in $(seq 1 200); do
  GRANT=$(sed -n 's/^apes: grant \([0-9a-f-]*\) needs approval.*/\1/p' "$D/err" | head -1)
  [ -n "$GRANT" ] && break
  kill -0 "$AGENT_PID" 2>/dev/null || break
  sleep 0.05
done
sed 's/^/  agent: /' "$D/err"
[ -n "$GRANT" ] || { echo "no grant was requested" >&2; wait "$AGENT_PID" || true; cat "$D/out" "$D/err" >&2; exit 1; }

step "the human approves: apes grants approve $GRANT"
HOME="$HUMAN_HOME" "$EXEC" grants approve "$GRANT"
set +e
wait "$AGENT_PID"
CODE=$?
set -e

step "result (exit $CODE): the command ran as uid"
sed 's/^/  agent: /' "$D/err" | tail -n +5
cat "$D/out"
step "audit log ($D/var/log/apes/audit.log)"
cat "$D/var/log/apes/audit.log"
if [ "$CODE" -ne 0 ] || [ "$(cat "$D/out")" != "0" ]; then
  echo "demo FAILED" >&2
  exit 1
fi
printf '\n\033[1mdemo ok:\033[0m the agent ran `id -u` as root after %s approved it; everything is cleaned up.\n' "$HUMAN"
