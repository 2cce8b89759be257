#!/bin/sh
# Tools the multi-host tests need: iproute2's `ip` (network namespaces) and
# nftables' `nft` (packet loss inside them). Installed here, not by hand, so a
# fresh machine or CI has them too; without root they are skipped.
missing=""
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing$missing for the network-namespace tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "note:$missing missing and not installable here; the multi-host tests that need them are skipped"
  fi
fi
exit 0
