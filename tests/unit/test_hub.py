import json

import pytest

from tokenbench import hub, models, provenance
from tokenbench.models import ModelSpec

STORED = "hf_storedLoginToken0123456789"


@pytest.fixture
def hf_home(monkeypatch, tmp_path):
    """An HF home with no token in it and no token in the environment; huggingface_hub reads its
    token path once at import, so the constant is pointed here too."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    home.mkdir()
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(provenance, "_SECRET_VALUES", {})
    return home


def test_stored_login_token_is_found_and_scrubbed(hf_home):
    (hf_home / "token").write_text(STORED + "\n")  # what `hf auth login` writes
    assert hub.token() == STORED
    assert hub.token_origin() == "the token stored by `hf auth login`"
    assert provenance.scrub(f"GET /api?token={STORED}") == "GET /api?token=<HF token>"


def test_stored_token_is_scrubbed_even_where_nobody_asked_for_it(hf_home):
    # render_pages and run_load_test never call hub.token(): the stored login is still scrubbed
    (hf_home / "token").write_text(STORED)
    assert provenance.scrub(f"engine log: auth {STORED} ok") == "engine log: auth <HF token> ok"


def test_env_token_wins_and_no_token_is_none(hf_home, monkeypatch):
    assert hub.token() is None and hub.token_origin() is None
    monkeypatch.setenv("HF_TOKEN", "hf_fromTheEnvironment")
    (hf_home / "token").write_text(STORED)
    assert hub.token() == "hf_fromTheEnvironment" and hub.token_origin() == "the token in HF_TOKEN"


class _Response:
    """The parts of an HTTP response huggingface_hub's errors read (its HTTP client differs by version)."""
    status_code = 401
    headers = {"x-error-code": "GatedRepo"}
    request = None
    url = "https://huggingface.co/meta-llama/x/resolve/main/config.json"


def _gated(**kw):
    """What huggingface_hub raises for a gated repo without access: a GatedRepoError over a 401."""
    from huggingface_hub.utils import GatedRepoError

    raise GatedRepoError("401 Client Error: access to model meta-llama/x is restricted", response=_Response())


def test_refused_download_without_token_names_both_ways_to_provide_one(hf_home, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", _gated)
    with pytest.raises(models.ModelError) as err:
        models.resolve_model("llama", ModelSpec(source="hub", repo_id="meta-llama/x", revision="a" * 40))
    msg = str(err.value)
    assert "meta-llama/x@" + "a" * 40 in msg and "no Hugging Face token was found" in msg
    assert "export HF_TOKEN=" in msg and "hf auth login" in msg


def test_refused_download_with_a_token_says_it_lacks_access_and_never_shows_it(hf_home, monkeypatch):
    import huggingface_hub

    seen = {}

    def gated(**kw):
        seen.update(kw)
        _gated()

    (hf_home / "token").write_text(STORED)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(models.ModelError) as err:
        models.hub_download("meta-llama/x", "a" * 40)
    msg = str(err.value)
    assert seen["token"] == STORED  # the stored login is what the download sent
    assert "with the token stored by `hf auth login`: that token has no access" in msg
    assert STORED not in msg and "hf auth login" in msg and "export HF_TOKEN=" in msg


def test_a_repo_the_hub_does_not_show_may_be_misspelt_or_private(hf_home, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import RepositoryNotFoundError

    def unseen(**kw):
        raise RepositoryNotFoundError("401 Client Error: Repository Not Found", response=_Response())

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unseen)
    with pytest.raises(models.ModelError) as err:
        models.hub_download("org/privat", "a" * 40)
    msg = str(err.value)
    assert "no repo org/privat@" in msg and "check the repo id" in msg
    assert "export HF_TOKEN=" in msg and "hf auth login" in msg


def test_network_failure_is_not_reported_as_a_refusal(hf_home, monkeypatch):
    import huggingface_hub

    def down(**kw):
        raise OSError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", down)
    with pytest.raises(models.ModelError, match="check network access to the hub") as err:
        models.hub_download("org/m", "a" * 40)
    assert "refused" not in str(err.value).split("(")[0]


def test_manifest_of_a_model_fetched_with_the_stored_token_does_not_hold_it(hf_home, monkeypatch, tmp_path):
    import huggingface_hub

    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "config.json").write_text(json.dumps({"architectures": ["X"], "num_hidden_layers": 1}))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: str(snap))
    (hf_home / "token").write_text(STORED)
    m = models.resolve_model("h", ModelSpec(source="hub", repo_id="org/m", revision="a" * 40))
    assert STORED not in json.dumps(m)


def test_dataset_download_refused_names_both_ways(hf_home, monkeypatch):
    import huggingface_hub

    from tokenbench.config import DatasetPrompts
    from tokenbench.load.prompts import PromptError, load_prompts

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _gated)
    with pytest.raises(PromptError, match=r"request.prompts.dataset 'dolly': the hub refused .*export HF_TOKEN=.*hf auth login"):
        load_prompts(DatasetPrompts(dataset="dolly"))
