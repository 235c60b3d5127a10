"""Weights that live online (the HF Hub, public URLs): read from the local caches, fetched only when the host
answers, and a cache miss without network is one line in seconds, not after the 20-50 s of retries that
huggingface_hub and urllib spend on a machine without network.

    with hub_access(spec, repo, cached=...):   # huggingface_hub forced offline when the Hub cannot be reached
        model = transformers.AutoModel.from_pretrained(repo)
    path = cached_url(spec, url)               # torch hub's cache, else downloaded (host checked first)
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0  # a reachable host answers a TCP connect in well under a second


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), also when set after huggingface_hub was imported."""
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
              for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether `url`'s host (or the proxy configured for its scheme) accepts a TCP connection within `timeout`.
    Run in a thread so that a hanging DNS lookup is bounded too."""
    u = urlparse(urllib.request.getproxies().get(urlparse(url).scheme) or url)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def hub_in_cache(repo: str, filename: str = "config.json") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


@contextmanager
def hub_access(spec: str, repo: str, cached: bool, how: str):
    """Let huggingface_hub reach the Hub only when it can: offline (HF_HUB_OFFLINE, or the endpoint does not answer)
    a cached repo is read from the cache alone, and an uncached one is an OSError at once. `how` says how to get it."""
    from huggingface_hub import constants

    if not hub_offline() and reachable(constants.ENDPOINT):
        yield
        return
    if not cached:
        why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{constants.ENDPOINT} cannot be reached"
        raise OSError(f"{spec}: {repo} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. "
                      f"Download it once online (`hf download {repo}`), or {how}")
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub (and by transformers through it)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def torch_hub_file(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps `url`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def check_url(spec: str, url: str, cached: Path, how: str) -> None:
    """An OSError at once when `cached` is absent and `url` cannot be fetched (HF_HUB_OFFLINE set, or its host does
    not answer). `how` says what to do instead."""
    if cached.is_file():
        return
    host = urlparse(url).hostname
    if hub_offline() or not reachable(url):
        why = "HF_HUB_OFFLINE is set" if hub_offline() else f"{host} cannot be reached"
        raise OSError(f"{spec}: {cached.name} is not in the cache ({cached.parent}) and {why}. Download {url} "
                      f"once online, then {how}")
