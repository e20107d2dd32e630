#!/bin/sh
# The VM's desktop: a virtual X screen, x11vnc on localhost:5900, a window manager, a terminal and
# noVNC (websockify) on localhost:6080. No port leaves the container: the bot reaches them through
# the helper's tunnel. GLX is off: it pulls mesa/llvm into Xvfb for nothing (70 MB -> 15 MB).
# Order matters for start-up time: x11vnc starts the moment X accepts clients (Xvfb's -displayfd
# says when), and listens before the heavier programs compete for the CPU.
export DISPLAY=:0 VMD_ROLE=desktop
geometry=${VM_DESKTOP_GEOMETRY:-1280x800x24}
ready=/tmp/.xvfb-ready
rm -f "$ready" && mkfifo "$ready"
Xvfb :0 -displayfd 3 -screen 0 "$geometry" -nolisten tcp -extension GLX 3>"$ready" >/tmp/xvfb.log 2>&1 &
read -r _display < "$ready"
rm -f "$ready"
x11vnc -display :0 -localhost -rfbport 5900 -forever -shared -nopw -quiet -noxdamage >/tmp/x11vnc.log 2>&1 &
# Let x11vnc listen (port 5900 = 170C) before the rest start: websockify's imports alone take
# the VM's one CPU for most of a second.
for _ in $(seq 1 200); do grep -q ":170C 00000000:0000 0A" /proc/net/tcp && break; sleep 0.01; done
jwm >/tmp/jwm.log 2>&1 &
(cd /workspace && xterm >/dev/null 2>&1 &)
exec websockify --web /usr/share/novnc 127.0.0.1:6080 127.0.0.1:5900 >/tmp/websockify.log 2>&1
