"""A real JupyterHub for the tests (and bench/class.py): started from PyPI's jupyterhub with
npm's configurable-http-proxy, DummyAuthenticator with a password, the local-process spawner
and nsmagic's pre-spawn hook; students log in through the Hub's REST API and run cells through
their kernel's websocket. Loopback only. Stdlib, websocket-client and nsmagic only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid

PASSWORD = "nsmagic-class-" + uuid.uuid4().hex[:8]
SERVICE_TOKEN = uuid.uuid4().hex


def why_no_hub() -> str | None:
    """Why this machine cannot run the Hub tier, or None."""
    if os.geteuid() != 0:
        return "the Hub's local-process spawner starts servers as other users: needs root"
    missing = [name for name in ("jupyterhub", "jupyterhub-singleuser")
               if not os.path.exists(os.path.join(os.path.dirname(sys.executable), name))]
    if missing:
        return (f"{', '.join(missing)} not in {os.path.dirname(sys.executable)}: "
                "pip install -e '.[hub]' (tests/install-deps does)")
    if not shutil.which("configurable-http-proxy"):
        return "configurable-http-proxy not found: npm install -g configurable-http-proxy " \
               "(tests/install-deps does)"
    try:
        import websocket  # noqa: F401
    except ImportError:
        return "websocket-client missing: pip install -e '.[hub]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """
from nsmagic.hub import setup_user_hook
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = "{dir}/proxy.pid"
c.JupyterHub.db_url = "sqlite:///{dir}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{dir}/cookie_secret"
c.JupyterHub.pid_file = "{dir}/hub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = "{password}"
c.Authenticator.allowed_users = {users!r}
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = ["{singleuser}"]
c.Spawner.environment = {{"PYTHONPATH": "{package}"}}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.pre_spawn_hook = setup_user_hook(mem="{mem}", cpus={cpus}, pids={pids})
c.JupyterHub.services = [{{"name": "nsmagic-test", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "nsmagic-test", "services": ["nsmagic-test"],
                            "scopes": ["admin:users", "admin:servers", "list:users"]}}]
"""


class Hub:
    """A Hub process and everything it starts; stop() ends them all."""

    def __init__(self, users: list[str], package: str, python: str = sys.executable, mem="1G",
                 cpus=1, pids=1024):
        """`python`: one the students can run (conftest's nobody_python): their servers'."""
        self.dir = tempfile.mkdtemp(prefix="nsmagic-hub-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = CONFIG.format(
            port=self.port, hub_port=free_port(), proxy_api_port=free_port(), dir=self.dir,
            password=PASSWORD, users=set(users), package=package, mem=mem, cpus=cpus,
            pids=pids, token=SERVICE_TOKEN,
            singleuser=os.path.join(os.path.dirname(python), "jupyterhub-singleuser"))
        with open(os.path.join(self.dir, "jupyterhub_config.py"), "w") as f:
            f.write(textwrap.dedent(config))
        self.log = open(os.path.join(self.dir, "hub.log"), "w")
        bin_dir = os.path.dirname(sys.executable)
        env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": self.dir,
               "PYTHONPATH": package}
        self.proc = subprocess.Popen([os.path.join(bin_dir, "jupyterhub"), "-f",
                                      "jupyterhub_config.py"], cwd=self.dir, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_up()

    def _wait_up(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Hub exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                self.api("GET", "/hub/api/", token=None)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        raise RuntimeError(f"the Hub did not answer within {within} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        self.log.flush()
        with open(os.path.join(self.dir, "hub.log")) as f:
            return "".join(f.readlines()[-lines:])

    def api(self, method: str, path: str, body=None, token: str | None = SERVICE_TOKEN):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token:
            request.add_header("Authorization", f"token {token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
        return json.loads(text) if text else None

    # --- a student's day

    def log_in(self, name: str, password: str = PASSWORD) -> str:
        """A token for the student, got with their name and password (REST API)."""
        answer = self.api("POST", f"/hub/api/users/{name}/tokens",
                          {"auth": {"username": name, "password": password},
                           "note": "nsmagic test login"}, token=None)
        return answer["token"]

    def start_server(self, name: str, token: str, within: float = 180) -> None:
        try:
            self.api("POST", f"/hub/api/users/{name}/server", token=token)
        except urllib.error.HTTPError as err:
            if err.code != 400:   # 400: already running
                raise
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            model = self.api("GET", f"/hub/api/users/{name}", token=token)
            server = model.get("servers", {}).get("", {})
            if server.get("ready"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{name}'s server did not start within {within} s:\n{self.tail()}")

    def stop_server(self, name: str) -> None:
        try:
            self.api("DELETE", f"/hub/api/users/{name}/server")
        except urllib.error.HTTPError:
            pass
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            model = self.api("GET", f"/hub/api/users/{name}")
            if not model.get("servers"):
                return
            time.sleep(0.3)

    def kernel(self, name: str, token: str) -> KernelSocket:
        model = self.api("POST", f"/user/{name}/api/kernels", {"name": "python3"}, token=token)
        return KernelSocket(self, name, token, model["id"])

    def stop(self) -> None:
        """The Hub stops the servers it spawned and the proxy it started; anything of its
        process group still there after is killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._stop_proxy()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_proxy(self) -> None:
        try:
            with open(os.path.join(self.dir, "proxy.pid")) as f:
                pid = int(f.read())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass


def _decode(frame) -> dict:
    """A text frame is the message's JSON; a binary one (a message with buffers: widgets)
    is Jupyter's legacy framing: a count n, n offsets (big-endian uint32), then the JSON
    from the first offset to the second, then the buffers."""
    if isinstance(frame, str):
        return json.loads(frame)
    import struct
    count = struct.unpack_from("!I", frame)[0]
    offsets = struct.unpack_from(f"!{count}I", frame, 4)
    end = offsets[1] if count > 1 else len(frame)
    return json.loads(frame[offsets[0]:end])


class KernelSocket:
    """One kernel of a student's server, driven through its websocket (JSON messages)."""

    def __init__(self, hub: Hub, user: str, token: str, kernel_id: str):
        import websocket
        self.hub, self.user, self.token, self.id = hub, user, token, kernel_id
        url = hub.url.replace("http", "ws") + f"/user/{user}/api/kernels/{kernel_id}/channels"
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {token}"],
                                              timeout=120)
        self.session = uuid.uuid4().hex

    def execute(self, code: str, timeout: float = 120) -> dict:
        """Run code; returns {"status", "stdout", "stderr", "error", "displays"}."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": self.user, "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        got = {"status": None, "stdout": "", "stderr": "", "error": None, "displays": 0}
        idle = False
        deadline = time.monotonic() + timeout
        while got["status"] is None or not idle:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = _decode(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == "stream":
                got[content["name"]] += content["text"]
            elif kind == "error":
                got["error"] = f"{content['ename']}: {content['evalue']}"
            elif kind in ("display_data", "update_display_data"):
                got["displays"] += 1
            elif kind == "execute_reply":
                got["status"] = content["status"]
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        return got

    def close(self) -> None:
        self.ws.close()
        try:
            self.hub.api("DELETE", f"/user/{self.user}/api/kernels/{self.id}", token=self.token)
        except (OSError, urllib.error.URLError):
            pass
