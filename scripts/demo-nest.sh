#!/usr/bin/env bash
# `make demo-nest`: the Nest on one machine, as root, in a throw-away prefix.
#   build -> install shim + executable -> local CA + TLS cert -> `apes idp serve` (TLS) with alice ->
#   `apes troop serve` -> `apes daemon init` (the _apes-nest service user, its HOME and own key) ->
#   alice enrolls the Nest and delegates to it -> `apes trust` -> `apes daemon run` as _apes-nest ->
#   alice: `apes nest spawn ... --approve` -> the agent runs as its own user and identity
#   (`apes whoami`) -> the audit trails of the shim and the troop name the Nest, alice and the agent.
# Everything it starts or creates is removed at the end (the _apes and _apes-nest system users stay).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/node_modules/.bin:$PATH"

if [ "$(id -u)" -ne 0 ]; then
  echo "make demo-nest installs a setuid binary and creates users: run it as root (sudo make demo-nest)" >&2
  exit 77
fi
for tool in openssl setpriv make cc; do
  command -v "$tool" >/dev/null || { echo "make demo-nest needs $tool" >&2; exit 78; }
done

HUMAN=alice@demo.example
AGENT=demobot
NEST=nest-demo+agent@demo.example
AUD=troop.demo
D=$(mktemp -d /tmp/apes-demo-nest.XXXXXX)
chmod 0755 "$D"
PIDS=()
cleanup() {
  local code=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # Ends the agent's processes and removes its user and HOME (the Nest's own remove step).
  [ -x "${EXEC:-}" ] && "$EXEC" agents deprovision "$AGENT" >/dev/null 2>&1 || true
  rm -rf "$D"
  exit $code
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
listening() { # $1 log file, $2 pid: the URL of the first "listening" line
  local url=""
  for _ in $(seq 1 200); do
    url=$(sed -n 's/.*"msg":"listening","url":"\([^"]*\)".*/\1/p' "$1" | head -1)
    [ -n "$url" ] && { echo "$url"; return 0; }
    kill -0 "$2" 2>/dev/null || { cat "$1" >&2; return 69; }
    sleep 0.1
  done
  cat "$1" >&2
  return 69
}

step "build and install into $D"
[ -x dist/apes ] || make -s build
make -s -o build install PREFIX="$D/usr" SYSCONFDIR="$D/etc" LOCALSTATEDIR="$D/var" NATIVE_OUT="$D/build"
SHIM="$D/usr/bin/apes"
EXEC="$D/usr/libexec/apes/apes"
NEST_HOME="$D/var/lib/apes-nest"

step "a local CA and a TLS certificate for 127.0.0.1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=apes demo CA" \
  -keyout "$D/ca.key" -out "$D/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$D/server.key" -out "$D/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$D/server.ext"
openssl x509 -req -in "$D/server.csr" -CA "$D/ca.pem" -CAkey "$D/ca.key" -CAcreateserial -days 1 \
  -extfile "$D/server.ext" -out "$D/server.pem" 2>/dev/null
chmod 0644 "$D/ca.pem"

step "the IdP (TLS) with the human $HUMAN, and the troop (apes troop serve)"
HUMAN_HOME="$D/alice"
mkdir -p "$HUMAN_HOME/.config/apes" && chmod 0700 "$HUMAN_HOME"
HOME="$HUMAN_HOME" "$EXEC" keygen --out "$HUMAN_HOME/id_ed25519" --comment "$HUMAN" >/dev/null
"$EXEC" idp users add "$HUMAN" --human --key "$HUMAN_HOME/id_ed25519.pub" --data "$D/idp"
"$EXEC" idp serve --listen 127.0.0.1:0 --data "$D/idp" --tls-cert "$D/server.pem" --tls-key "$D/server.key" 2>"$D/idp.log" &
PIDS+=($!)
IDP=$(listening "$D/idp.log" "${PIDS[-1]}")
"$EXEC" troop serve --idp "$IDP" --idp-ca "$D/ca.pem" --client-id "$AUD" \
  --listen 127.0.0.1:0 --data "$D/troop" 2>"$D/troop.log" &
PIDS+=($!)
TROOP=$(listening "$D/troop.log" "${PIDS[-1]}")
echo "IdP $IDP   troop $TROOP"
printf 'ca_file = "%s"\n' "$D/ca.pem" >"$HUMAN_HOME/.config/apes/config.toml"
as_alice() { HOME="$HUMAN_HOME" APES_TROOP="$TROOP" APES_TROOP_AUDIENCE="$AUD" "$EXEC" "$@"; }
as_alice login "$HUMAN" --key "$HUMAN_HOME/id_ed25519" --idp "$IDP" >/dev/null

step "sudo apes daemon init: the Nest's own service user, HOME and key"
"$EXEC" daemon init --idp "$IDP" --troop "$TROOP" --troop-audience "$AUD" --owner "$HUMAN" --host demo \
  --ca-file "$D/ca.pem" | tee "$D/init.txt"
PUB=$(cat "$NEST_HOME/.config/apes/id_ed25519.pub")

step "alice enrolls the Nest (an agent she owns) and delegates to it"
as_alice agents add --name nest-demo --key "$PUB"
DELEGATION=$(as_alice --json delegate --to "$NEST" --audience apes-cli | sed -n 's/^  "id": "\([^"]*\)".*/\1/p')
"$EXEC" daemon init --delegation "$DELEGATION" >/dev/null
mkdir -p "$NEST_HOME/.config/apes"
printf 'ca_file = "%s"\n' "$D/ca.pem" >"$NEST_HOME/.config/apes/config.toml"
chown _apes-nest:_apes-nest "$NEST_HOME/.config/apes/config.toml"

step "sudo apes trust: the shim accepts the IdP; alice approves; _apes-nest acts as the Nest"
"$SHIM" trust --idp "$IDP" --ca-file "$D/ca.pem" --approvers "$HUMAN" --map "_apes-nest=$NEST" --run-as "root,$AGENT"

step "apes daemon run, as _apes-nest"
setpriv --reuid _apes-nest --regid _apes-nest --init-groups -- \
  env -i HOME="$NEST_HOME" PATH=/usr/bin:/bin LANG=C.UTF-8 "$EXEC" daemon run 2>"$D/nest.log" &
PIDS+=($!)
for _ in $(seq 1 200); do grep -q '"msg":"connected to the troop"' "$D/nest.log" && break; sleep 0.1; done
grep -q '"msg":"connected to the troop"' "$D/nest.log" || { cat "$D/nest.log" >&2; exit 69; }
as_alice nest list

step "alice: apes nest spawn $NEST $AGENT --approve -- /bin/sh -c 'apes whoami; sleep'"
as_alice nest spawn "$NEST" "$AGENT" --approve -- /bin/sh -c "$EXEC whoami > \$HOME/whoami.txt; exec /bin/sleep 600"
for _ in $(seq 1 100); do [ -s "$D/var/lib/apes-agents/$AGENT/whoami.txt" ] && break; sleep 0.1; done
as_alice nest status "$NEST"

step "the agent, as its own Unix user and its own identity"
ps -o user=,pid=,args= -u "$AGENT" | sed 's/^/  /'
sed 's/^/  whoami: /' "$D/var/lib/apes-agents/$AGENT/whoami.txt"

step "audit: the shim's log (requested by the Nest, decided by alice, run as root / the agent)"
sed 's/^/  /' "$D/var/log/apes/audit.log" | grep '"decision":"allow"'
step "audit: the troop's log (alice asked, the Nest did it)"
grep -E '"event":"(intent.submitted|frame)"' "$D/troop/audit.log" | sed 's/^/  /' | head -12

WHO=$(cat "$D/var/lib/apes-agents/$AGENT/whoami.txt")
case "$WHO" in
*"$AGENT+agent@demo.example"*) ;;
*) echo "demo-nest FAILED: the agent is not its own identity" >&2; exit 1 ;;
esac
printf '\n\033[1mdemo-nest ok:\033[0m the Nest (%s) spawned %s for %s, approved by her; everything is cleaned up.\n' "$NEST" "$AGENT" "$HUMAN"
