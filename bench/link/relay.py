"""A TCP relay that carries bytes at a UART's pace: each direction at most baud/10 bytes per second
(8N1: 10 bit times per byte), delivered when their last bit would have arrived. Loopback only."""
import socket
import threading
import time


class UartRelay:
    """Listens on 127.0.0.1 (`port`); each client is connected to 127.0.0.1:`target_port`."""

    def __init__(self, target_port, baud):
        self.target_port = target_port
        self.rate = baud / 10.0  # bytes per second
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src, dst):
        # The line is busy until `line_free`. Bytes that arrive while it is busy go out back to
        # back; only a real pause (longer than this relay's own scheduling jitter) lets it idle.
        piece = max(1, int(self.rate * 0.002))  # ~2 ms of line time per delivery
        line_free = time.monotonic()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                now = time.monotonic()
                if now - line_free > 0.002:
                    line_free = now
                for at in range(0, len(data), piece):
                    chunk = data[at:at + piece]
                    line_free += len(chunk) / self.rate
                    delay = line_free - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    dst.sendall(chunk)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self._listener.close()
