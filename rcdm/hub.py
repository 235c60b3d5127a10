"""Model names -> local pipeline directories, and pipeline directories -> Hub repos.

    resolve_model_path("runs/x/pipeline")               # a directory written by save_pretrained or `rcdm train`
    resolve_model_path("rcdm-cifar10-backbone")         # a shipped model, under pretrained_root(); None = the default
    resolve_model_path("rcdm-imagenet128-dino-trunk")   # a published ImageNet-128 RCDM, downloaded and converted once
    resolve_model_path("org/name", revision="v1")       # a Hub repo: huggingface_hub's cache, HF_HUB_OFFLINE honoured

An existing local path wins over a Hub id spelled the same way; a `Path` object is never looked up on the Hub.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .convert import PUBLISHED, resolve_published
from .resources import pretrained_root

PIPELINE_FILE = "rcdm_pipeline.json"
DEFAULT_MODEL = "rcdm-cifar10-backbone"
# huggingface_hub's repo id rule: one "/", segments of letters, digits, "-", "_", "." (no "--" or ".." inside)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def shipped_models() -> list[Path]:
    """The model directories shipped in `pretrained/` (those holding an rcdm_pipeline.json), the default first."""
    root = pretrained_root()
    found = sorted(d for d in root.glob("*") if (d / PIPELINE_FILE).is_file()) if root.is_dir() else []
    return sorted(found, key=lambda d: d.name != DEFAULT_MODEL)


def is_hub_id(name) -> bool:
    """"org/name" as the Hub spells repo ids; paths (`./x/y`, `/abs`, `a/b/c`, Path objects) are not."""
    return isinstance(name, str) and bool(_HUB_ID.match(name)) and ".." not in name and "--" not in name


def resolve_model_path(name_or_path=None, revision: str | None = None, cache_dir=None, token=None,
                       allow_patterns: list[str] | None = None, pipeline_class=None) -> Path:
    """The local directory of a model: a directory path, a shipped model name, a published ImageNet-128 RCDM name,
    or a Hub repo id "org/name" (downloaded into the HF cache, or read from it offline). None = the default model.
    `revision`, `cache_dir`, `token` and `allow_patterns` apply to Hub ids only; a published name is converted on
    first use by `pipeline_class` (`RCDMPipeline` passes itself: this module is below it)."""
    name = name_or_path if name_or_path is not None else DEFAULT_MODEL
    p = Path(name)
    for cand in (p, pretrained_root() / p):
        if (cand / PIPELINE_FILE).is_file():
            return _local(cand, revision)
    if is_hub_id(name) and not p.exists():
        return hub_snapshot(name, revision, cache_dir, token, allow_patterns)
    if isinstance(name, str):
        published = resolve_published(name, pipeline_class)  # downloads and converts once
        if published is not None:
            return _local(published, revision)
    raise FileNotFoundError(_not_found(name))


def _local(path: Path, revision) -> Path:
    if revision is not None:
        raise ValueError(f"revision={revision!r} applies to Hub repo ids, but '{path}' is a local model")
    return path


def _not_found(name) -> str:
    shipped = [d.name for d in shipped_models()]
    where = (f"'{name}' exists but holds no {PIPELINE_FILE}" if Path(name).exists() else
             f"no RCDM pipeline at '{name}' (looked for {PIPELINE_FILE} there and in {pretrained_root()})")
    hub = ("; a local path wins over a Hub repo id of the same spelling" if is_hub_id(name) else
           ", or a Hugging Face Hub repo id 'org/name'")
    return (f"{where}. Shipped models: {shipped or 'none found'}; published ImageNet-128 RCDMs: "
            f"{', '.join(sorted(PUBLISHED))} (NAME@RCDM_FILE[+ENCODER_FILE] for local copies). Or pass a directory "
            f"written by `RCDMPipeline.save_pretrained` or `rcdm train`{hub}.")


# ------------------------------------------------------------------------------------------------ the Hub
def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, also when it was set after huggingface_hub was imported."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE)


def hub_snapshot(repo_id: str, revision: str | None = None, cache_dir=None, token=None,
                 allow_patterns: list[str] | None = None) -> Path:
    """A Hub model repo's snapshot directory via `snapshot_download` (the HF cache first; nothing is fetched with
    HF_HUB_OFFLINE=1). Every failure is one FileNotFoundError line naming the repo and what to do."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import (GatedRepoError, LocalEntryNotFoundError,  # .utils: also before 0.24's .errors
                                       RepositoryNotFoundError, RevisionNotFoundError)

    rev = revision or "main"
    offline = hub_offline()
    try:
        path = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=offline, allow_patterns=allow_patterns, library_name="rcdm"))
    except RevisionNotFoundError:
        raise FileNotFoundError(f"Hub repo '{repo_id}' has no revision '{rev}' (a branch, tag or commit hash)") from None
    except GatedRepoError:
        raise FileNotFoundError(f"Hub repo '{repo_id}' is gated: accept its terms on the Hub, then pass token= "
                                "or log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"Hub repo '{repo_id}' not found, or private (pass token= or log in with "
                                "`hf auth login`); no local directory of that name exists either") from None
    except LocalEntryNotFoundError:
        cache = cache_dir or constants.HF_HUB_CACHE
        why = ("HF_HUB_OFFLINE=1 forbids downloading it" if offline else "the Hub could not be reached")
        get = f"hf download {repo_id}" + (f" --revision {rev}" if revision else "")
        raise FileNotFoundError(
            f"Hub repo '{repo_id}' (revision '{rev}') is not in the Hugging Face cache ({cache}) and {why}. "
            f"Download it once online (`{get}`, or from_pretrained with HF_HUB_OFFLINE unset), point cache_dir= or "
            "HF_HUB_CACHE at a cache that holds it, or pass a local directory") from None
    if not (path / PIPELINE_FILE).is_file():
        raise FileNotFoundError(f"Hub repo '{repo_id}' (revision '{rev}') holds no {PIPELINE_FILE}: not an RCDM "
                                "pipeline (RCDMPipeline.save_pretrained and push_to_hub write one)")
    return path


def upload_to_hub(folder, repo_id: str, commit_message: str = "Upload RCDM pipeline", private: bool | None = None,
                  token=None, revision: str | None = None, create_pr: bool = False) -> str:
    """Upload a saved pipeline directory to the Hub model repo `repo_id` (created if missing); the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message=commit_message, revision=revision, create_pr=create_pr)
    return str(getattr(info, "commit_url", info))
