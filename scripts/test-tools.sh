#!/bin/sh
# Tools the multi-host tests need (network namespaces: iproute2's `ip`).
# Installed here, not by hand, so a fresh machine or CI has them too.
if ! command -v ip >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing iproute2 for the network-namespace tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
  else
    echo "note: 'ip' (iproute2) is missing and cannot be installed here; the multi-host tests will be skipped"
  fi
fi
exit 0
