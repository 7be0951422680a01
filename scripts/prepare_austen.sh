#!/usr/bin/env bash
# Build data/austen.txt (Jane Austen's six novels, ~4 MB of UTF-8 text) from the Debian
# package r-cran-janeaustenr, with no R or Python: apt-get download fetches the .deb,
# dpkg -x unpacks it (no root needed), `ferric prepare austen` reads R's lazy-load database.
# Steps already done are skipped, so running it twice costs nothing.
#
# usage: scripts/prepare_austen.sh [--cache DIR] [--out FILE] [--ferric BIN] [--force]
#   --cache DIR   where the .deb and its unpacked tree are kept (default: data)
#   --out FILE    the text file to write (default: DIR/austen.txt)
#   --ferric BIN  the ferric program (default: $FERRIC, build/ferric, or ferric on PATH)
#   --force       rebuild the text file even when it exists
set -euo pipefail

cache=data
out=""
ferric="${FERRIC:-}"
force=0
while [ $# -gt 0 ]; do
    case "$1" in
    --cache) cache="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --ferric) ferric="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare_austen: unknown option '$1'" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || out="$cache/austen.txt"

if [ "$force" = 0 ] && [ -s "$out" ]; then
    echo "prepare_austen: $out already exists ($(wc -c <"$out") bytes); --force rebuilds it"
    exit 0
fi

mkdir -p "$cache"
pkgroot="$cache/janeaustenr-deb"
rdx="$pkgroot/usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"

if [ ! -f "$rdx" ]; then
    deb=$(ls "$cache"/r-cran-janeaustenr_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "prepare_austen: apt-get not found; download r-cran-janeaustenr_*.deb from" \
                "https://packages.debian.org/r-cran-janeaustenr into $cache/ and rerun" >&2
            exit 1
        fi
        echo "prepare_austen: downloading r-cran-janeaustenr into $cache/"
        (cd "$cache" && apt-get download r-cran-janeaustenr)
        deb=$(ls "$cache"/r-cran-janeaustenr_*.deb | head -n 1)
    fi
    echo "prepare_austen: unpacking $deb"
    rm -rf "$pkgroot.tmp"
    mkdir -p "$pkgroot.tmp"
    dpkg -x "$deb" "$pkgroot.tmp"
    rm -rf "$pkgroot"
    mv "$pkgroot.tmp" "$pkgroot"
fi

if [ -z "$ferric" ]; then
    here="$(cd "$(dirname "$0")/.." && pwd)"
    if [ -x "$here/build/ferric" ]; then ferric="$here/build/ferric"
    elif command -v ferric >/dev/null 2>&1; then ferric=ferric
    else
        echo "prepare_austen: no ferric program found; build it (cmake --build build) or pass --ferric" >&2
        exit 1
    fi
fi

mkdir -p "$(dirname "$out")"
"$ferric" prepare austen --pkg "$pkgroot" --out "$out"
