#!/bin/sh
# The VM's desktop: a virtual X screen, a window manager, a terminal, x11vnc on localhost:5900 and
# noVNC (websockify) on localhost:6080. No port leaves the container: the bot reaches them through
# the helper's tunnel. GLX is off: it pulls mesa/llvm into Xvfb for nothing (70 MB -> 15 MB).
export DISPLAY=:0 VMD_ROLE=desktop
geometry=${VM_DESKTOP_GEOMETRY:-1280x800x24}
Xvfb :0 -screen 0 "$geometry" -nolisten tcp -extension GLX >/tmp/xvfb.log 2>&1 &
for _ in $(seq 1 50); do [ -e /tmp/.X11-unix/X0 ] && break; sleep 0.02; done
x11vnc -display :0 -localhost -rfbport 5900 -forever -shared -nopw -quiet -noxdamage >/tmp/x11vnc.log 2>&1 &
jwm >/tmp/jwm.log 2>&1 &
(cd /workspace && xterm >/dev/null 2>&1 &)
exec websockify --web /usr/share/novnc 127.0.0.1:6080 127.0.0.1:5900 >/tmp/websockify.log 2>&1
