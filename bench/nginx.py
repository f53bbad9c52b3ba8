"""The fixed non-streaming upstream: nginx answering every chat-completions POST with one JSON body."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.payloads import CHAT_PATH, chat_completion
from bench.procs import BenchError, Child, start

_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def locate_nginx(install: bool) -> str:
    """The nginx binary; with `install`, apt-get installs nginx-light when it is missing (root only)."""
    found = shutil.which("nginx") or next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)
    if found:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        _apt_install("nginx-light")
        found = shutil.which("nginx") or next((c for c in _CANDIDATES if os.access(c, os.X_OK)), None)
        if found:
            return found
    raise BenchError(
        "nginx not found: install it (Debian: `apt-get update && apt-get install -y nginx-light`), "
        "or run as root so bench/run.py can install it itself"
    )


def _apt_install(package: str) -> None:
    """apt-get install, refreshing the package lists first only if the plain install fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", package]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode == 0:
        return
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
    subprocess.run(install, env=env, capture_output=True, check=False)


def nginx_config(workdir: Path, port: int) -> str:
    body = chat_completion().decode()
    if "'" in body or "$" in body:
        raise BenchError("the fixed response must not contain ' or $ (nginx string syntax)")
    return f"""
worker_processes 1;
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {CHAT_PATH} {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""


def start_nginx(binary: str, workdir: Path, port: int) -> Child:
    """One nginx process (no master, no daemon) on 127.0.0.1:`port`, everything under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_config(workdir, port))
    child = start(
        "nginx",
        [binary, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "nginx-error.log")],
        workdir / "nginx.out",
    )
    try:
        child.wait_listening(port)
    except BaseException:
        child.stop()
        raise
    return child
