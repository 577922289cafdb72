#!/bin/sh
# Baked into the test guest's image as its one job after boot: mount the runner's 9p shares
# (the checkout read-only, the results directory, the offline Python wheelhouse) and run
# the checkout's scripts/guest/in-guest.sh. The unit powers the guest off when this ends.
set -u
modprobe -a 9p 9pnet_virtio || true
status=0
for share in checkout:ro results:rw wheelhouse:ro; do
  tag=${share%%:*}
  mkdir -p "/mnt/$tag"
  mount -t 9p -o "trans=virtio,version=9p2000.L,msize=524288,${share#*:}" "$tag" "/mnt/$tag" || status=1
done
if [ "$status" -ne 0 ]; then
  echo "guest: a 9p share is missing" >&2
  exit 1
fi
exec /bin/bash /mnt/checkout/scripts/guest/in-guest.sh
