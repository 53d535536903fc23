"""A real S3-compatible server (moto's server mode) in a subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

BUCKET = "zi-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    key: str
    secret: str
    bucket: str
    process: subprocess.Popen

    def options(self, **overrides: Any) -> dict[str, Any]:
        """``storage_options`` for s3fs with these credentials and this endpoint."""
        opts: dict[str, Any] = {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }
        opts.update(overrides)
        return opts


# IAM authentication starts after this many AWS actions: the setup below makes exactly
# these (create user, access key, policy, bucket); every later request is authenticated.
_SETUP_ACTIONS = 4


def start_s3_server(timeout: float = 30.0) -> S3Server:
    """Start ``moto.server`` on a free port of 127.0.0.1 with IAM authentication on."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_SETUP_ACTIONS)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on {endpoint}") from None
            time.sleep(0.1)
    kw = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "setup",
        "aws_secret_access_key": "setup",
    }
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="zi")
    key = iam.create_access_key(UserName="zi")["AccessKey"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="zi", PolicyName="s3", PolicyDocument=json.dumps(policy))
    boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], BUCKET, proc)


def stop_s3_server(server: S3Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
