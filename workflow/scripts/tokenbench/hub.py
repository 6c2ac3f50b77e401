"""The Hugging Face token, asked for only where something is downloaded from the hub.

The token is found the way ``huggingface_hub`` itself finds it (``huggingface_hub.get_token()``):
the HF_TOKEN variable, else the login stored by ``hf auth login`` (the token file in the HF home,
HF_HOME / HF_TOKEN_PATH). Planning a workflow (``snakemake -n``) never needs it: only the jobs that
download (the model stage, dataset prompts) call :func:`token`, and a public model needs none. Any
token found is registered with :mod:`tokenbench.provenance`, so it is scrubbed from whatever is
recorded, whichever way it came.
"""

from __future__ import annotations

from tokenbench import provenance

HOW_TO_PROVIDE = ("provide a Hugging Face token that has access: `export HF_TOKEN=hf_...`, or log in once "
                  "with `hf auth login` (the token is stored in the Hugging Face cache and found from there)")


def token() -> str | None:
    """The Hugging Face token (HF_TOKEN, or the stored ``hf auth login`` token), or None; registered
    as a secret so that it never reaches a log, a data file or the site."""
    from huggingface_hub import get_token

    value = get_token()
    if value:
        provenance.register_secret_value("HF token", value)
    return value


def token_origin() -> str | None:
    """Where :func:`token` found the token, in words for an error message (never the token)."""
    import os

    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "the token in HF_TOKEN"
    if provenance.stored_hf_token():
        return "the token stored by `hf auth login`"
    return None


def refused(exc: BaseException) -> bool:
    """Whether a hub error means access was refused (a gated or private repo, or a bad token),
    rather than a network failure or a missing file."""
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    if isinstance(exc, (GatedRepoError, RepositoryNotFoundError)):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status in (401, 403)


def refusal_message(what: str, exc: BaseException) -> str:
    """The error for a refused download of ``what``: both ways to provide a token, or, when a token
    was sent, that it lacks access. A repo the hub says does not exist may be private, or misspelt."""
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    origin = token_origin()
    unseen = isinstance(exc, RepositoryNotFoundError) and not isinstance(exc, GatedRepoError)
    if origin is None:
        if unseen:
            return (f"the hub has no repo {what} visible without a token: check the repo id and revision, or, "
                    f"if the repo is private, {HOW_TO_PROVIDE}")
        return f"the hub refused {what}: it is gated or private and no Hugging Face token was found; {HOW_TO_PROVIDE}"
    if unseen:
        return (f"the hub has no repo {what} visible with {origin}: check the repo id and revision, and that the "
                f"token's account can see the repo, or {HOW_TO_PROVIDE}")
    return (f"the hub refused {what} with {origin}: that token has no access (for a gated model, accept its "
            f"licence on the model's hub page with the account the token belongs to), or {HOW_TO_PROVIDE}")
