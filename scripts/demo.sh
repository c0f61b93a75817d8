#!/usr/bin/env bash
# The hvlab demo: start a host, create and start two VMs, watch their counters advance, look at the
# processes, then shut everything down. Always in a home of its own, made here and removed at the
# end, whatever HVLAB_HOME says: it ends with `hvlab down`, which must never reach a user's host
# (with HVLAB_HOME set to a running host's home, it once stopped that host's VMs).
set -euo pipefail
cd "$(dirname "$0")/.."
own_home=$(mktemp -d -t hvlab-demo-XXXXXX)
export HVLAB_HOME="$own_home"
hv() { node packages/cli/bin/hvlab.mjs "$@"; }
trap 'echo; echo "\$ hvlab down"; hv down; rm -rf "$own_home"' EXIT
say() { printf '\n\033[1m$ hvlab %s\033[0m\n' "$*"; }
say up --lps 2;                         hv up --lps 2
say host info;                          hv host info
say vm new web --memory 64M --vps 2;    hv vm new web --memory 64M --vps 2
say vm new db --memory 32M --workload counter:250; hv vm new db --memory 32M --workload counter:250
say vm start web;                       hv vm start web
say vm start db;                        hv vm start db
say ps;                                 hv ps
for i in 1 2 3; do
  say vm list;                          hv vm list
  sleep 1
done
say debug hypercall --as web CreatePartition memoryBytes=2097152
hv debug hypercall --as web CreatePartition memoryBytes=2097152 || true
say vm peek web --gpa 0x2000 --len 16;  hv vm peek web --gpa 0x2000 --len 16
say vm pause db;                        hv vm pause db
say vm list;                            hv vm list
say vm ic web;                          hv vm ic web
say vm kvp web set owner alice;         hv vm kvp web set owner alice
say vm kvp web get owner;               hv vm kvp web get owner
say vm kvp web list --pool auto;        hv vm kvp web list --pool auto
say vm ic web --disable kvp;            hv vm ic web --disable kvp
say vm ic web --enable kvp;             hv vm ic web --enable kvp
say vm new crunch --memory 16M --vps 2 --workload spin; hv vm new crunch --memory 16M --vps 2 --workload spin
say vm set-processor crunch --maximum 50; hv vm set-processor crunch --maximum 50
say vm start crunch;                    hv vm start crunch
sleep 1
say top --once;                         hv top --once
say vm save db;                         hv vm save db
say vm start db;                        hv vm start db
say vm list;                            hv vm list
root_pid=$(hv host info --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).pids.root))')
printf '\n\033[1m$ kill -9 %s   # the root partition process: no VM stops, the hypervisor restarts it\033[0m\n' "$root_pid"
kill -9 "$root_pid"
say vm list;                            hv vm list
say vm stop web;                        hv vm stop web
say vm list;                            hv vm list
