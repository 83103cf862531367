"""Watches a client's connection (the C++ client's ConnectionWatch, src/connection_watch.h).

libzmq's socket monitor reports a disconnect as soon as the TCP (or IPC) connection
closes, and also when the ZMTP heartbeats set here go unanswered for
``heartbeat * liveness`` seconds (a stopped process, a cut link). Only a disconnect after
a completed handshake counts as a loss: a connection that never got through keeps its
calls to their deadlines.
"""

from __future__ import annotations

from typing import Optional

import zmq
from zmq.utils.monitor import recv_monitor_message


class ConnectionWatch:
    def __init__(self, socket: zmq.Socket, heartbeat: Optional[float], liveness: int) -> None:
        if heartbeat:
            ivl = max(1, int(heartbeat * 1000))
            timeout = ivl * max(1, liveness)
            socket.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
            socket.setsockopt(zmq.HEARTBEAT_TTL, min(timeout, 6553500))
        self._watched = socket
        self.socket: Optional[zmq.Socket] = socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._established = False

    def lost(self) -> bool:
        """Reads the pending events; True when an established connection was lost."""
        lost = False
        while self.socket is not None:
            try:
                event = recv_monitor_message(self.socket, zmq.NOBLOCK)
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._established = True
            elif event["event"] == zmq.EVENT_DISCONNECTED and self._established:
                self._established = False
                lost = True
        return lost

    def close(self) -> None:
        if self.socket is not None:
            try:
                self._watched.disable_monitor()
            except zmq.ZMQError:
                pass
            self.socket.close(linger=0)
            self.socket = None
