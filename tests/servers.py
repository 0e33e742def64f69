"""A real ``heke-serve`` process on 127.0.0.1 for the tests: started on a free port, waited
for until ready, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

READY_S = 60  # import, engine load and warm-up on a busy 2-core CI machine


class Server:
    def __init__(
        self, engine: str | Path, *args: str | Path, tmp: Path, ready: bool = True
    ) -> None:
        """``heke-serve -e engine --port 0 *args``, with its temporary files under ``tmp``;
        waited for until ``/readyz`` answers 200 unless ``ready`` is False."""
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "heke_serve.cli", "-e", str(engine), "--port", "0"]
        self.proc = subprocess.Popen(
            [*command, *map(str, args)],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TMPDIR": str(tmp)},
        )
        self.lines: list[str] = []
        self.listening = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self.listening.wait(READY_S):
            self.stop()
            raise RuntimeError("heke-serve did not start:\n" + "".join(self.lines))
        self.url = next(
            line.split("http://")[1].split()[0] for line in self.lines if "listening on" in line
        )
        self.url = "http://" + self.url
        if ready:
            self.wait_ready()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "listening on" in line:
                self.listening.set()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("heke-serve exited:\n" + "".join(self.lines))
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("heke-serve never became ready:\n" + "".join(self.lines))

    def client(self, token: str | None = None, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def temp_files(self) -> list[Path]:
        """Files in the server's upload folders (``heke-serve-*``): uploads it forgot to
        delete. (ONNX Runtime keeps a session file of its own in the same TMPDIR.)"""
        return [p for folder in self.upload_folders() for p in folder.rglob("*")]

    def upload_folders(self) -> list[Path]:
        return sorted(self.tmp.glob("heke-serve-*"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return "".join(self.lines)


def upload(
    client: httpx.Client, path: str | Path, route: str = "/v1/score", **params: object
) -> httpx.Response:
    with open(path, "rb") as handle:
        return client.post(route, files={"video": (Path(path).name, handle)}, params=params)


def metric(text: str, name: str, labels: Sequence[str] = ()) -> float:
    """The value of the Prometheus sample ``name`` whose labels include every one of ``labels``
    (``'code="200"'``...); 0 when there is none."""
    for line in text.splitlines():
        if line.startswith(name) and all(label in line for label in labels):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0
