#!/bin/sh
# PID 1 is tini; this starts the desktop when VM_DESKTOP=1, then becomes the helper daemon (vmd).
# Desktop processes carry VMD_ROLE=desktop so the helper does not count them as user work.
if [ "${VM_DESKTOP:-0}" = "1" ]; then
  VMD_ROLE=desktop /opt/vmd/desktop.sh &
fi
exec python3 -u /opt/vmd/vmd.py
