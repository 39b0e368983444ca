#!/bin/sh
# Builds a small tagged image without any registry: Debian's static busybox, imported
# into the local Docker daemon with one link per applet (sh, httpd, sleep, cat, ...).
# The Docker runtime's tests and examples run it; the process runtime needs no image.
#
#   scripts/busybox-image.sh [tag]        # default: keelson.dev/busybox:1.35
set -eu
tag="${1:-keelson.dev/busybox:1.35}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "busybox-image: $tag is already there"
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 777 "$work" # apt downloads as its own user
cd "$work"
if [ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && ldd /bin/busybox 2>&1 | grep -q 'not a dynamic'; then
    cp /bin/busybox busybox
else
    echo "busybox-image: fetching Debian's busybox-static"
    apt-get download busybox-static >/dev/null
    dpkg-deb -x busybox-static_*.deb pkg
    cp pkg/bin/busybox busybox
fi
mkdir -p root/bin root/tmp root/etc root/www
cp busybox root/bin/busybox
for applet in $(./busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "root/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' > root/etc/passwd
echo 'root:x:0:' > root/etc/group
echo 'hello from busybox' > root/www/index.html
chmod 1777 root/tmp
tar -C root -c . | docker import \
    --change 'ENV PATH=/bin' \
    --change 'CMD ["sh"]' \
    - "$tag" >/dev/null
echo "busybox-image: built $tag ($(du -sh root | cut -f1))"
