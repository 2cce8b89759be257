#!/bin/sh
# Tools the tests need, installed here, not by hand, so a fresh machine or CI
# has them too: iproute2's `ip` (network namespaces), nftables' `nft` (packet
# loss inside them), redis-server (the Redis source's tests, and openssl for
# their TLS certificates), and tclsh with TclUDP and tcllib (members of the original
# Tcl package, the interoperation tests' peers). Without root they are skipped.
missing=""
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
if ! command -v tclsh >/dev/null 2>&1 || ! printf 'if {[catch {package require udp; package require struct::set}]} {exit 1}\n' | tclsh >/dev/null 2>&1; then
  missing="$missing tcl tcl-udp tcllib"
fi
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing$missing for the tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "note:$missing missing and not installable here; the tests that need them are skipped"
  fi
fi
exit 0
