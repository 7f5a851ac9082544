#!/usr/bin/env bash
# Refresh the Leaflet copy the viewer serves (rsvision/viz/viewer/static/vendor/leaflet/) from the npm
# registry: the viewer works offline, so the map library ships inside the Python package.
# Usage: scripts/vendor_leaflet.sh [VERSION]   (default 1.9.4; needs npm and network access)
set -euo pipefail
VERSION=${1:-1.9.4}
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/rsvision/viz/viewer/static/vendor/leaflet"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "leaflet@$VERSION" >/dev/null && tar xzf "leaflet-$VERSION.tgz")
pkg="$tmp/package"
mkdir -p "$dest/images"
cp "$pkg/dist/leaflet.js" "$pkg/dist/leaflet.css" "$dest/"
cp "$pkg"/dist/images/* "$dest/images/"
cp "$pkg/LICENSE" "$dest/LICENSE"
echo "$VERSION" > "$dest/VERSION"
echo "Leaflet $VERSION vendored into $dest"
