"""A real vLLM OpenAI-compatible server on the tiny random-weight Qwen2.5-Omni, with OmniZip
(the plugin's architecture, preset 45) and without it (vLLM's own model: the A/B baseline),
and on the tiny Qwen3-Omni with OmniZip, driven by the official ``openai`` client the way a
user would.

One server per setting for the whole module (start-up costs a minute or two on a small CPU);
each is stopped with its whole process group. Expected token counts come from the checkpoint's
Hugging Face processor and the exact-budget rule written out in tests/vllm_server/expected.py,
never from the plugin.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import openai
import pytest
from test_readme import SERVER_BLOCKS
from vllm_server.expected import Layout, exact_budget_removed, uncompressed_layout
from vllm_server.harness import AUDIO_IN_VIDEO, DEMO_CLIP, VllmServer, video_message

# Short enough that a 40-s clip does not fit even compressed, long enough for the demo clip
# uncompressed (1.7k tokens).
MAX_MODEL_LEN = 2048
PRESET_45 = {"rho_audio": 0.3, "rho_video": 0.6}
QUESTION = "What happens in the video?"
# the two prefix-cache questions differ from their first token on
QUESTION_B = "Describe the sound."


# (family, OmniZip): the A/B pair on Qwen2.5-Omni, and OmniZip on Qwen3-Omni
SERVERS = [("qwen2.5-omni", "off"), ("qwen2.5-omni", "on"), ("qwen3-omni", "on")]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """The folder the server may read local media from: the bundled clip and a 40-s clip."""
    from omnizip.demo.media import make_test_clip

    folder = tmp_path_factory.mktemp("media")
    shutil.copy(DEMO_CLIP, folder / "demo_clip.mp4")
    make_test_clip(folder / "long_40s.mp4", seconds=40.0, width=160, height=120, fps=4)
    return folder


@pytest.fixture(scope="module", params=SERVERS, ids=[f"{f}-omnizip-{o}" for f, o in SERVERS])
def server(request, media, tmp_path_factory):
    from omnizip.vllm.checkpoint import save_tiny_checkpoint

    family, omnizip = request.param
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny-{family}"), family)
    log = tmp_path_factory.mktemp("logs") / f"vllm-{family}-omnizip-{omnizip}.log"
    srv = VllmServer(checkpoint, log, omnizip=omnizip, media_root=media,
                     vllm_args=["--max-model-len", str(MAX_MODEL_LEN)])
    with srv:
        yield srv


@pytest.fixture(scope="module")
def checkpoint(server) -> Path:
    """The checkpoint folder the current server serves (its processor gives the layout)."""
    return server.model


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=600)


def _model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def _expected_prompt_tokens(server: VllmServer, layout: Layout) -> int:
    """Uncompressed length (OmniZip off) or the exact-budget compressed length (preset 45)."""
    removed = exact_budget_removed(layout, **PRESET_45) if _omnizip(server) == "on" else 0
    return layout.total - removed


def _omnizip(server: VllmServer) -> str:
    return server.cmd[server.cmd.index("--omnizip") + 1]


def _ask(client, url: str, question: str, salt: str | None = None, **kw):
    extra = dict(AUDIO_IN_VIDEO)
    if salt is not None:
        extra["cache_salt"] = salt
    return client.chat.completions.create(
        model=_model(client), messages=video_message(url, question), max_tokens=4,
        temperature=0.0, extra_body=extra, **kw)


def test_video_question_is_answered_with_the_expected_prompt_tokens(server, client, checkpoint, media):
    clip = media / "demo_clip.mp4"
    reply = _ask(client, clip.as_uri(), QUESTION)

    layout = uncompressed_layout(checkpoint, clip, QUESTION)
    assert reply.choices[0].finish_reason in {"length", "stop"}
    assert reply.usage.completion_tokens >= 1
    assert reply.usage.prompt_tokens == _expected_prompt_tokens(server, layout)
    if _omnizip(server) == "on":
        assert reply.usage.prompt_tokens < layout.total


def test_second_question_on_the_same_video_reuses_the_cached_prefix(server, client, checkpoint, media):
    clip = media / "demo_clip.mp4"
    salt = uuid.uuid4().hex  # a cache namespace no other test has filled
    first = _ask(client, clip.as_uri(), QUESTION, salt)
    second = _ask(client, clip.as_uri(), QUESTION_B, salt)

    layout = uncompressed_layout(checkpoint, clip, QUESTION)
    removed = layout.total - _expected_prompt_tokens(server, layout)
    prefix = layout.prefix - removed  # system turn + user header + (compressed) media block
    block = server.block_size()
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # the prefix cache hands out whole blocks of the common prefix: every full block up to the
    # question, which covers the (compressed) media
    assert second.usage.prompt_tokens_details.cached_tokens == prefix // block * block
    assert prefix // block * block > 0


def test_clip_longer_than_the_context_is_refused_and_the_server_keeps_serving(
        server, client, checkpoint, media):
    clip = media / "long_40s.mp4"
    with pytest.raises(openai.BadRequestError) as err:
        _ask(client, clip.as_uri(), QUESTION)

    expected = _expected_prompt_tokens(server, uncompressed_layout(checkpoint, clip, QUESTION))
    assert expected > MAX_MODEL_LEN
    assert err.value.status_code == 400
    # the refusal names the (compressed, with OmniZip) prompt length and the limit
    message = str(err.value)
    assert f"Input length ({expected})" in message
    assert f"maximum context length ({MAX_MODEL_LEN})" in message
    assert server.healthy()
    assert _ask(client, (media / "demo_clip.mp4").as_uri(), QUESTION).usage.completion_tokens >= 1


@pytest.mark.parametrize(("url", "status"), [
    ("file:///no/such/dir/clip.mp4", 400),  # outside the allowed media folder
    ("not a url", 400),
    ("data:video/mp4;base64,AAAA-not-base64-!!", 400),
    # inside the allowed folder but no such file: vLLM 0.32 answers 500 (its media connector
    # lets the FileNotFoundError through as a server error); the server keeps serving
    ("FILE_MISSING", 500),
    ("FILE_NOT_A_VIDEO", 400),  # inside the allowed folder, not a video
])
def test_malformed_media_url_gets_an_error_and_the_server_keeps_serving(
        server, client, media, url, status):
    if url == "FILE_MISSING":
        url = (media / "missing.mp4").as_uri()
    elif url == "FILE_NOT_A_VIDEO":
        junk = media / "junk.mp4"
        junk.write_bytes(b"this is not an mp4 file")
        url = junk.as_uri()
    with pytest.raises(openai.APIStatusError) as err:
        _ask(client, url, QUESTION)
    assert err.value.status_code == status
    assert server.healthy()
    assert _ask(client, (media / "demo_clip.mp4").as_uri(), QUESTION).usage.completion_tokens >= 1


#: the documented token counts of the openai-client request of docs/serving.md
STATED_TOKENS = re.compile(r"# (\d+) with OmniZip \(preset 45\), (\d+) with OMNIZIP=off")


def test_the_documented_request_states_its_token_counts():
    """One documented server block is the openai-client request whose printed prompt tokens
    the test below checks (so that check cannot go missing with an edit of the page)."""
    assert [f"{page}:{line}" for page, line, source in SERVER_BLOCKS if STATED_TOKENS.search(source)]


@pytest.mark.parametrize(("page", "line", "source"), SERVER_BLOCKS,
                         ids=[f"{page}:{line}" for page, line, _ in SERVER_BLOCKS])
def test_documented_request_runs_as_written(server, checkpoint, media, monkeypatch, capsys,
                                            page, line, source):
    """Every ``# readme: needs-server`` block of README.md and docs/*.md (tests/test_readme.py
    finds them), run as written against this server (only `make serve`'s address and the
    clip's folder, which this server may read, are swapped in). The openai-client request of
    docs/serving.md, "A request with the openai client", prints the prompt tokens its comment
    states and this test computes."""
    monkeypatch.chdir(media.parent)  # the block's relative path resolves under the media folder
    source = source.replace("http://127.0.0.1:8000", server.base_url)
    source = source.replace('"omnizip/assets/demo_clip.mp4"', f'"{media.name}/demo_clip.mp4"')
    exec(compile(source, f"{page}:{line}", "exec", dont_inherit=True), {"__name__": "__readme__"})
    stated = STATED_TOKENS.search(source)
    if stated is None:  # a block without stated counts: running as written is its check
        return
    printed = int(capsys.readouterr().out.split()[-1])

    family = server.model.name  # "tiny-<family>" folder of save_tiny_checkpoint's caller
    layout = uncompressed_layout(checkpoint, media / "demo_clip.mp4",
                                 "What happens in the video, and what is said?")
    assert printed == _expected_prompt_tokens(server, layout)
    if "qwen2.5" in family:  # the page's numbers are the built-in Qwen2.5-Omni's
        on, off = int(stated.group(1)), int(stated.group(2))
        assert printed == (on if _omnizip(server) == "on" else off)
