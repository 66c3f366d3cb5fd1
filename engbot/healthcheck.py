"""``python -m engbot.healthcheck [PATH]``: exit 0 if this host's ``engbot run`` answers ``PATH`` (default /healthz).

The Docker image's HEALTHCHECK and the compose example use it: python's urllib, so the image needs no curl, and
no argument holds a space (podman 4's Docker API splits a health check's CMD arguments at spaces). It reads
HTTP_HOST and HTTP_PORT as ``engbot run`` does; ``python -m engbot.healthcheck /readyz`` checks readiness.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from engine.config import load_environ

TIMEOUT_S = 4.0


def url(environ: Mapping[str, str], path: str = "/healthz") -> str:
    host = environ.get("HTTP_HOST", "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::"):  # listening everywhere: ask over loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    if ":" in host:
        host = f"[{host}]"
    port = environ.get("HTTP_PORT", "").strip() or "8080"
    return f"http://{host}:{port}/{path.lstrip('/')}"


def check(target: str, timeout: float = TIMEOUT_S) -> str | None:
    """None if ``target`` answers 2xx, else why not."""
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            status: int = resp.status
    except urllib.error.HTTPError as exc:
        return f"{target}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{target}: {exc}"
    return None if 200 <= status < 300 else f"{target}: HTTP {status}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    problem = check(url(load_environ(".env"), args[0] if args else "/healthz"))
    if problem is not None:
        print(f"engbot: unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
