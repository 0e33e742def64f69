"""A small RTSP server on 127.0.0.1 for tests: it serves one video, once, to one client.

FFmpeg can send RTP but cannot serve RTSP, so this server speaks the RTSP side (RFC 2326:
OPTIONS, DESCRIBE with the SDP the ffmpeg tool writes for the video, SETUP, PLAY) and, on
PLAY, runs ``ffmpeg -re ... -f rtp`` to two local UDP ports and relays its RTP and RTCP
packets over the RTSP connection itself (interleaved, ``$`` frames on channels 0 and 1), as
cameras do for clients behind firewalls. A SETUP asking for UDP is refused with 461, so the
client falls back to TCP: no packet can be lost on the way. When the video has been sent the
server closes the connection, the stream's end.
"""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import threading
from pathlib import Path
from typing import BinaryIO

QUIET = ("-hide_banner", "-loglevel", "error")


class RtspServer:
    def __init__(self, ffmpeg: str, video: Path) -> None:
        self.ffmpeg, self.video = ffmpeg, str(video)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"rtsp://127.0.0.1:{self.listener.getsockname()[1]}/clip"
        self.sdp = self._sdp()
        self.methods: list[str] = []
        self.relayed = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(timeout=60)

    def _sdp(self) -> str:
        """The video's session description, as ffmpeg's RTP muxer writes it, for RTSP."""
        command = [self.ffmpeg, *QUIET, "-i", self.video, "-c", "copy", "-frames:v", "1"]
        command += ["-f", "rtp", "-sdp_file", "/dev/stdout", "rtp://127.0.0.1:9"]
        written = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        lines = [re.sub(r"^m=video \d+", "m=video 0", line) for line in written.splitlines()]
        lines = [line for line in lines if line and not line.startswith("SDP:")]
        return "\r\n".join([*lines, "a=control:trackID=0"]) + "\r\n"

    def _serve(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return  # closed before a client came
        with client, client.makefile("rb") as requests:
            while request := _read_request(requests):
                method, fields = request
                self.methods.append(method)
                if self._answer(client, method, fields):
                    return

    def _answer(self, client: socket.socket, method: str, fields: dict[str, str]) -> bool:
        """Answers one request; True once the video has been played."""
        cseq = fields.get("CSeq", "0")
        transport = fields.get("Transport", "")
        if method == "DESCRIBE":
            headers = f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\n"
            _reply(client, cseq, headers, self.sdp)
        elif method == "SETUP" and "TCP" not in transport:
            _reply(client, cseq, "", status="461 Unsupported Transport")
        elif method == "SETUP":
            _reply(client, cseq, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 1\r\n")
        elif method == "PLAY":
            _reply(client, cseq, "Session: 1\r\n")
            self._relay(client)
            return True
        else:
            _reply(client, cseq, "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n")
        return False

    def _relay(self, client: socket.socket) -> None:
        """ffmpeg sends the video at its own pace to two UDP ports (RTP, RTCP); each datagram
        goes on over the RTSP connection on its channel."""
        ports = [_udp() for _ in range(2)]
        rtp, rtcp = (port.getsockname()[1] for port in ports)
        command = [self.ffmpeg, *QUIET, "-re", "-i", self.video, "-c", "copy", "-f", "rtp"]
        command += [f"rtp://127.0.0.1:{rtp}?rtcpport={rtcp}"]
        sender = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        with selectors.DefaultSelector() as ready:
            for channel, port in enumerate(ports):
                ready.register(port, selectors.EVENT_READ, channel)
            while (events := ready.select(0.5)) or sender.poll() is None:
                for key, _ in events:
                    datagram = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    frame = bytes([36, key.data]) + len(datagram).to_bytes(2, "big")
                    client.sendall(frame + datagram)
                    self.relayed += key.data == 0
        for port in ports:
            port.close()


def _read_request(requests: BinaryIO) -> tuple[str, dict[str, str]] | None:
    lines = []
    while (line := requests.readline()) not in (b"\r\n", b""):
        lines.append(line.decode().strip())
    if not lines:
        return None
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    if length := int(fields.get("Content-Length", "0")):
        requests.read(length)
    return lines[0].split()[0], fields


def _reply(
    client: socket.socket, cseq: str, headers: str, body: str = "", status: str = "200 OK"
) -> None:
    data = body.encode()
    head = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n{headers}Content-Length: {len(data)}\r\n\r\n"
    client.sendall(head.encode() + data)


def _udp() -> socket.socket:
    port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    port.bind(("127.0.0.1", 0))
    return port
