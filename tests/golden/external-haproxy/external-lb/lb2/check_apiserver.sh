#!/bin/sh
# haimg 0.1.0: cluster racks, API endpoint 10.0.0.100:6443, load balancer node lb2
#
# keepalived's health check for the API VIP (seed 002): the API must answer on this node
# and, while this node holds the VIP, on the VIP too. Exit 0 healthy, 1 unhealthy.
set -u

APISERVER_VIP='10.0.0.100'
APISERVER_DEST_PORT='6443'

errorExit() {
    echo "*** $*" 1>&2
    exit 1
}

curl -sfk --max-time 2 "https://localhost:${APISERVER_DEST_PORT}/healthz" -o /dev/null \
    || errorExit "Error GET https://localhost:${APISERVER_DEST_PORT}/healthz"
if ip -o addr show | grep -qF " ${APISERVER_VIP}/"; then
    curl -sfk --max-time 2 "https://${APISERVER_VIP}:${APISERVER_DEST_PORT}/healthz" -o /dev/null \
        || errorExit "Error GET https://${APISERVER_VIP}:${APISERVER_DEST_PORT}/healthz"
fi
